// How a kernel is launched and how it declares dynamic shared memory, in one place, so the same
// kernel source builds for a GPU (nvcc) and for the CPU emulator of the CUDA execution model
// (tests/emu, KVSHARD_CUDA_EMU), which runs the kernels' own code in the emulated tests. The
// emulated build puts the emulator's device vocabulary (tests/emu/emu_device.h) ahead of every
// source file; nothing here or in the kernels depends on it otherwise.
//
//   KVS_LAUNCH(grid, block, smem_bytes, stream, kernel<Args>)(arguments...);
//   KVS_DYNAMIC_SMEM(float, smem);   // inside a kernel: the launch's dynamic shared memory
//   KVS_SHARED(float, partial, 32);  // inside a kernel: static shared memory, float partial[32]
//                                    // (a pointer under the emulator, an array on the GPU)
#pragma once

#ifdef KVSHARD_CUDA_EMU
#define KVS_LAUNCH(grid, block, smem, stream, ...) \
  ::kvshard::emu::Launch(#__VA_ARGS__, grid, block, smem, stream, &__VA_ARGS__)
#define KVS_DYNAMIC_SMEM(type, name) \
  type* name = static_cast<type*>(::kvshard::emu::DynamicSharedMemory())
#define KVS_SHARED(type, name, count)    \
  static const char name##_site = 0;     \
  type* const name = static_cast<type*>( \
      ::kvshard::emu::StaticSharedMemory(&name##_site, sizeof(type) * (count), alignof(type)))
#else
#define KVS_LAUNCH(grid, block, smem, stream, ...) __VA_ARGS__<<<grid, block, smem, stream>>>
#define KVS_DYNAMIC_SMEM(type, name) extern __shared__ type name[]
#define KVS_SHARED(type, name, count) __shared__ type name[count]
#endif
