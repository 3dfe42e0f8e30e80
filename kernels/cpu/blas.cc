#include "kernels/cpu/blas.h"

#include <dlfcn.h>

#include <cstdlib>
#include <mutex>

namespace kvshard {
namespace {

const BlasFns* Open() {
#ifdef KVSHARD_OPENBLAS_LIBRARY
  // Read by the library's constructor, so set before dlopen; a host's own setting wins.
  if (const std::string core = blas_core_for_cpu(); !core.empty()) {
    setenv("OPENBLAS_CORETYPE", core.c_str(), /*overwrite=*/0);
  }
  void* lib = dlopen(KVSHARD_OPENBLAS_LIBRARY, RTLD_NOW | RTLD_LOCAL);
  if (lib == nullptr) return nullptr;
  static BlasFns fns;
  fns.sgemm = reinterpret_cast<decltype(fns.sgemm)>(dlsym(lib, "cblas_sgemm"));
  fns.set_num_threads =
      reinterpret_cast<decltype(fns.set_num_threads)>(dlsym(lib, "openblas_set_num_threads"));
  fns.corename = reinterpret_cast<decltype(fns.corename)>(dlsym(lib, "openblas_get_corename"));
  if (fns.sgemm == nullptr || fns.set_num_threads == nullptr) return nullptr;
  return &fns;
#else
  return nullptr;
#endif
}

std::once_flag once;
const BlasFns* fns = nullptr;

}  // namespace

std::string blas_core_for_cpu() {
  __builtin_cpu_init();
  if (__builtin_cpu_supports("avx512f") && __builtin_cpu_supports("avx512bw") &&
      __builtin_cpu_supports("avx512dq") && __builtin_cpu_supports("avx512vl")) {
    return "SkylakeX";
  }
  if (__builtin_cpu_supports("avx2") && __builtin_cpu_supports("fma")) return "Haswell";
  return "";
}

const BlasFns* blas() {
  std::call_once(once, [] { fns = Open(); });
  return fns;
}

std::string blas_description() {
  const BlasFns* b = blas();
  if (b == nullptr) return "none";
  std::string s = "OpenBLAS (OpenMP)";
  if (b->corename != nullptr) s += std::string(" ") + b->corename();
  return s;
}

}  // namespace kvshard
