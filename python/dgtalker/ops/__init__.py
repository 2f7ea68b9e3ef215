"""torch autograd wrappers over the compiled engine, one module per kernel family."""
