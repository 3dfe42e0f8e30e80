#include "kernels/cuda/gemm.h"

#include <climits>
#include <type_traits>

#include "common/cuda/cuda_check.h"

namespace kvshard::cuda {
namespace {

template <typename T>
constexpr cudaDataType_t CudaType() {
  if constexpr (std::is_same_v<T, float>) {
    return CUDA_R_32F;
  } else if constexpr (std::is_same_v<T, __half>) {
    return CUDA_R_16F;
  } else {
    static_assert(std::is_same_v<T, __nv_bfloat16>);
    return CUDA_R_16BF;
  }
}

}  // namespace

StatusOr<std::unique_ptr<CublasHandle>> CublasHandle::Create(size_t workspace_bytes) {
  std::unique_ptr<CublasHandle> h(new CublasHandle());
  KVS_RETURN_IF_ERROR(KVS_CUBLAS(cublasCreate(&h->handle_)));
  // The default math mode keeps f32 inputs in f32 with CUBLAS_COMPUTE_32F (TF32 would need
  // CUBLAS_TF32_TENSOR_OP_MATH) and uses tensor cores for f16/bf16 inputs.
  KVS_RETURN_IF_ERROR(KVS_CUBLAS(cublasSetMathMode(h->handle_, CUBLAS_DEFAULT_MATH)));
  if (workspace_bytes > 0) {
    KVS_ASSIGN_OR_RETURN(h->workspace_,
                         DeviceBuffer::Allocate(workspace_bytes, "cuBLAS workspace"));
  }
  return h;
}

CublasHandle::~CublasHandle() {
  if (handle_) cublasDestroy(handle_);
}

template <typename T>
cublasStatus_t matmul(const CublasHandle& handle, float* out, const T* x, const T* w,
                      int64_t tokens, int64_t in_features, int64_t out_features, bool accumulate,
                      cudaStream_t stream) {
  if (tokens <= 0 || out_features <= 0) return CUBLAS_STATUS_SUCCESS;
  if (tokens > INT_MAX || in_features <= 0 || in_features > INT_MAX || out_features > INT_MAX) {
    return CUBLAS_STATUS_INVALID_VALUE;
  }
  // cublasSetStream resets the workspace to cuBLAS's own pool, so the workspace follows it.
  cublasStatus_t rc = cublasSetStream(handle.get(), stream);
  if (rc != CUBLAS_STATUS_SUCCESS) return rc;
  if (handle.workspace()) {
    rc = cublasSetWorkspace(handle.get(), handle.workspace(), handle.workspace_bytes());
    if (rc != CUBLAS_STATUS_SUCCESS) return rc;
  }
  // Column-major view: out^T [n, t] = W [n, k] (w read as k x n column-major, transposed) times
  // x^T [k, t] (x read as k x t column-major).
  const float alpha = 1.0f, beta = accumulate ? 1.0f : 0.0f;
  const int m = static_cast<int>(out_features), n = static_cast<int>(tokens),
            k = static_cast<int>(in_features);
  return cublasGemmEx(handle.get(), CUBLAS_OP_T, CUBLAS_OP_N, m, n, k, &alpha, w, CudaType<T>(), k,
                      x, CudaType<T>(), k, &beta, out, CUDA_R_32F, m, CUBLAS_COMPUTE_32F,
                      CUBLAS_GEMM_DEFAULT);
}

template cublasStatus_t matmul<float>(const CublasHandle&, float*, const float*, const float*,
                                      int64_t, int64_t, int64_t, bool, cudaStream_t);
template cublasStatus_t matmul<__half>(const CublasHandle&, float*, const __half*, const __half*,
                                       int64_t, int64_t, int64_t, bool, cudaStream_t);
template cublasStatus_t matmul<__nv_bfloat16>(const CublasHandle&, float*, const __nv_bfloat16*,
                                              const __nv_bfloat16*, int64_t, int64_t, int64_t, bool,
                                              cudaStream_t);

}  // namespace kvshard::cuda
