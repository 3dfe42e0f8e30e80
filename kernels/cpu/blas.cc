#include "kernels/cpu/blas.h"

#include <dlfcn.h>

#include <mutex>

namespace kvshard {
namespace {

const BlasFns* Open() {
#ifdef KVSHARD_OPENBLAS_LIBRARY
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
