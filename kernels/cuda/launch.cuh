// How a kernel is launched and how it declares dynamic shared memory, in one place, so the same
// kernel source builds for a GPU (nvcc) and for the CPU emulator of the CUDA execution model
// (kernels/cuda/emu, KVSHARD_CUDA_EMU), which runs the kernels' own code in the emulated tests.
//
//   KVS_LAUNCH(grid, block, smem_bytes, stream, kernel<Args>)(arguments...);
//   KVS_DYNAMIC_SMEM(float, smem);   // inside a kernel: the launch's dynamic shared memory
#pragma once

#ifdef KVSHARD_CUDA_EMU
#include "kernels/cuda/emu/emu_device.h"
#define KVS_LAUNCH(grid, block, smem, stream, ...) \
  ::kvshard::emu::Launch(#__VA_ARGS__, grid, block, smem, stream, &__VA_ARGS__)
#define KVS_DYNAMIC_SMEM(type, name) \
  type* name = static_cast<type*>(::kvshard::emu::DynamicSharedMemory())
#else
#define KVS_LAUNCH(grid, block, smem, stream, ...) __VA_ARGS__<<<grid, block, smem, stream>>>
#define KVS_DYNAMIC_SMEM(type, name) extern __shared__ type name[]
#endif
