# The CUDA backend: kernels/cuda, transport/cuda (NCCL and host-staged device communicators),
# shard/cuda (the device model of one rank) and their tests (ctest label `gpu`).
#
# Included from the top-level CMakeLists.txt when nvcc was found. Everything here compiles on a
# machine without a GPU; the tests then skip (GTEST_SKIP) where they need a device and still run
# the host-only checks of the launch planning.

set(KVSHARD_CUDA_ARCHITECTURES "80;90" CACHE STRING
    "GPU architectures the CUDA backend is compiled for (sm_80 = A100, sm_90 = H100/H200)")
if(NOT DEFINED CMAKE_CUDA_ARCHITECTURES)
  set(CMAKE_CUDA_ARCHITECTURES ${KVSHARD_CUDA_ARCHITECTURES})
endif()
# One CUDA runtime per process: the shared libcudart that cuBLAS and NCCL use too (CMake would
# otherwise link the static runtime into CUDA targets next to the shared one).
set(CMAKE_CUDA_RUNTIME_LIBRARY Shared)
enable_language(CUDA)
# Device code needs no C++20, and CMake 3.25 knows no C++20 flag for nvcc.
set(CMAKE_CUDA_STANDARD 17)
set(CMAKE_CUDA_STANDARD_REQUIRED ON)
set(CMAKE_CUDA_EXTENSIONS OFF)

find_package(CUDAToolkit REQUIRED)
find_path(NCCL_INCLUDE_DIR nccl.h HINTS ${CUDAToolkit_INCLUDE_DIRS} /usr/local/include /usr/include)
find_library(NCCL_LIBRARY nccl HINTS ${CUDAToolkit_LIBRARY_DIR} /usr/local/cuda/lib64
             /usr/local/lib /usr/lib/x86_64-linux-gnu)
if(NOT NCCL_INCLUDE_DIR OR NOT NCCL_LIBRARY)
  message(FATAL_ERROR "kvshard: the CUDA backend needs NCCL (nccl.h and libnccl); found "
                      "include '${NCCL_INCLUDE_DIR}', library '${NCCL_LIBRARY}'. Install NCCL or "
                      "configure with -DKVSHARD_ENABLE_CUDA=OFF.")
endif()
message(STATUS "kvshard: CUDA ${CUDAToolkit_VERSION}, architectures ${CMAKE_CUDA_ARCHITECTURES}, "
               "NCCL ${NCCL_LIBRARY}")

# The top-level add_compile_options() are GCC flags that nvcc does not accept: the CUDA targets
# get them per language instead (host code of .cu files through -Xcompiler).
set(KVSHARD_CUDA_TARGET_OPTIONS
  $<$<COMPILE_LANGUAGE:CXX>:-Wall> $<$<COMPILE_LANGUAGE:CXX>:-Wextra>
  $<$<COMPILE_LANGUAGE:CXX>:-Wno-unused-parameter>
  $<$<COMPILE_LANGUAGE:CUDA>:-Xcompiler=-Wall,-Wextra,-Wno-unused-parameter>
  $<$<COMPILE_LANGUAGE:CUDA>:-lineinfo>)
if(KVSHARD_NATIVE)
  list(APPEND KVSHARD_CUDA_TARGET_OPTIONS $<$<COMPILE_LANGUAGE:CXX>:-march=native>)
endif()

file(GLOB KVSHARD_CUDA_SOURCES CONFIGURE_DEPENDS
  common/cuda/*.cc kernels/cuda/*.cu kernels/cuda/*.cc transport/cuda/*.cc shard/cuda/*.cc shard/cuda/*.cu)
add_library(kvshard_cuda STATIC ${KVSHARD_CUDA_SOURCES})
set_property(TARGET kvshard_cuda PROPERTY COMPILE_OPTIONS ${KVSHARD_CUDA_TARGET_OPTIONS})
target_include_directories(kvshard_cuda PUBLIC ${CMAKE_CURRENT_SOURCE_DIR} ${NCCL_INCLUDE_DIR})
target_link_libraries(kvshard_cuda PUBLIC
  kvshard_core CUDA::cudart CUDA::cublas CUDA::cublasLt ${NCCL_LIBRARY})
target_compile_definitions(kvshard_cuda PUBLIC KVSHARD_HAVE_CUDA=1)
set_target_properties(kvshard_cuda PROPERTIES
  CUDA_RUNTIME_LIBRARY Shared POSITION_INDEPENDENT_CODE ON)

# `kvshard --device cuda` (cluster/runtime.cc compiles its CUDA path under KVSHARD_HAVE_CUDA). The
# CLI objects see the CUDA headers but link no backend: `kvshard` gets the real one, `kvshard_emu`
# the emulator (tests/emu/emu.cmake, built only with the tests).
target_include_directories(kvshard_cli PUBLIC ${CUDAToolkit_INCLUDE_DIRS} ${NCCL_INCLUDE_DIR})
target_compile_definitions(kvshard_cli PUBLIC KVSHARD_HAVE_CUDA=1)
target_link_libraries(kvshard PRIVATE kvshard_cuda)

if(KVSHARD_BUILD_TESTS)
  include(tests/emu/emu.cmake)
  add_subdirectory(tests/gpu ${CMAKE_BINARY_DIR}/tests/gpu)
endif()

# The GPU benchmarks (bench/gpu_bench.cc): ceilings, paged attention, decode and prefill of a
# Llama-3-8B-shaped model, each against a ceiling measured in the same run. See docs/gpu.md.
add_executable(kvshard_gpu_bench bench/gpu_bench.cc)
set_property(TARGET kvshard_gpu_bench PROPERTY COMPILE_OPTIONS ${KVSHARD_CUDA_TARGET_OPTIONS})
target_link_libraries(kvshard_gpu_bench PRIVATE kvshard_cuda CLI11::CLI11)
