"""Models of dgtalker: the head template and the Gaussian prior's generator."""
from .generator import Generator, GeneratorConfig
from .template import HeadTemplate, build_template, load_template

__all__ = ["Generator", "GeneratorConfig", "HeadTemplate", "build_template", "load_template"]
