# Decides whether the CUDA kernels are built.
#   DGTALKER_CUDA=AUTO (default): build them when a CUDA compiler is found
#   DGTALKER_CUDA=ON:             require a CUDA compiler
#   DGTALKER_CUDA=OFF:            CPU backend only
# DGTALKER_CUDA_ARCHITECTURES picks the targets (CMake syntax, e.g. "90-real" or
# "80-real;90-real;90-virtual"); the default covers Turing to Hopper as machine
# code plus Hopper PTX so newer GPUs can JIT it.
set(DGTALKER_CUDA "AUTO" CACHE STRING "Build CUDA kernels: AUTO, ON or OFF")
set(DGTALKER_CUDA_ARCHITECTURES "75-real;80-real;86-real;89-real;90-real;90-virtual"
    CACHE STRING "CUDA architectures to build for")

string(TOUPPER "${DGTALKER_CUDA}" _dgt_cuda_mode)
set(DGTALKER_WITH_CUDA OFF)
if(_dgt_cuda_mode STREQUAL "OFF" OR _dgt_cuda_mode STREQUAL "0" OR _dgt_cuda_mode STREQUAL "FALSE")
  message(STATUS "dgtalker: CUDA disabled (DGTALKER_CUDA=${DGTALKER_CUDA})")
else()
  include(CheckLanguage)
  check_language(CUDA)
  if(CMAKE_CUDA_COMPILER)
    set(CMAKE_CUDA_ARCHITECTURES "${DGTALKER_CUDA_ARCHITECTURES}")
    enable_language(CUDA)
    set(CMAKE_CUDA_STANDARD 17)
    set(CMAKE_CUDA_STANDARD_REQUIRED ON)
    set(DGTALKER_WITH_CUDA ON)
    message(STATUS "dgtalker: CUDA kernels for ${CMAKE_CUDA_ARCHITECTURES}")
  elseif(_dgt_cuda_mode STREQUAL "ON" OR _dgt_cuda_mode STREQUAL "1" OR _dgt_cuda_mode STREQUAL "TRUE")
    message(FATAL_ERROR "dgtalker: DGTALKER_CUDA=ON but no CUDA compiler was found "
                        "(put nvcc on PATH or set CUDACXX)")
  else()
    message(STATUS "dgtalker: no CUDA compiler found, building the CPU backend only")
  endif()
endif()
