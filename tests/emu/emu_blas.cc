// The CPU emulator's cuBLAS: the handle calls kvshard makes and cublasGemmEx, computed on the host
// in f32 with cuBLAS's column-major semantics, after checking what cuBLAS checks (dimensions and
// leading dimensions) and what it cannot (every operand lies inside one device allocation: a
// wrong leading dimension or transpose shows up here as a range error rather than as wrong
// numbers).
#include <cublas_v2.h>
#include <cuda_bf16.h>
#include <cuda_fp16.h>

#include <algorithm>
#include <string>
#include <vector>

#include "tests/emu/emu_state.h"

struct cublasContext {
  cudaStream_t stream = nullptr;
  void* workspace = nullptr;
  size_t workspace_bytes = 0;
  cublasMath_t math = CUBLAS_DEFAULT_MATH;
};

namespace {

bool ElementSize(cudaDataType t, size_t* bytes) {
  switch (t) {
    case CUDA_R_32F: *bytes = 4; return true;
    case CUDA_R_16F:
    case CUDA_R_16BF: *bytes = 2; return true;
    default: return false;
  }
}

float Load(const void* p, cudaDataType t, int64_t i) {
  switch (t) {
    case CUDA_R_32F: return static_cast<const float*>(p)[i];
    case CUDA_R_16F: return __half2float(static_cast<const __half*>(p)[i]);
    case CUDA_R_16BF: return __bfloat162float(static_cast<const __nv_bfloat16*>(p)[i]);
    default: return 0.0f;
  }
}

void Store(void* p, cudaDataType t, int64_t i, float v) {
  switch (t) {
    case CUDA_R_32F: static_cast<float*>(p)[i] = v; break;
    case CUDA_R_16F: static_cast<__half*>(p)[i] = __float2half_rn(v); break;
    case CUDA_R_16BF: static_cast<__nv_bfloat16*>(p)[i] = __float2bfloat16_rn(v); break;
    default: break;
  }
}

// Bytes spanned by a column-major rows x cols operand with leading dimension ld.
size_t Span(int64_t rows, int64_t cols, int64_t ld, size_t element) {
  if (rows == 0 || cols == 0) return 0;
  return static_cast<size_t>((cols - 1) * ld + rows) * element;
}

cublasStatus_t Invalid(const std::string& what) {
  kvshard::emu::Complain("cublasGemmEx: " + what);
  return CUBLAS_STATUS_INVALID_VALUE;
}

}  // namespace

extern "C" {

cublasStatus_t cublasCreate_v2(cublasHandle_t* handle) {
  if (!handle) return CUBLAS_STATUS_INVALID_VALUE;
  *handle = new cublasContext();
  return CUBLAS_STATUS_SUCCESS;
}

cublasStatus_t cublasDestroy_v2(cublasHandle_t handle) {
  if (!handle) return CUBLAS_STATUS_NOT_INITIALIZED;
  delete handle;
  return CUBLAS_STATUS_SUCCESS;
}

cublasStatus_t cublasSetStream_v2(cublasHandle_t handle, cudaStream_t stream) {
  if (!handle) return CUBLAS_STATUS_NOT_INITIALIZED;
  handle->stream = stream;
  handle->workspace = nullptr;  // as cuBLAS does: back to its own pool
  handle->workspace_bytes = 0;
  return CUBLAS_STATUS_SUCCESS;
}

cublasStatus_t cublasSetWorkspace_v2(cublasHandle_t handle, void* workspace, size_t bytes) {
  if (!handle) return CUBLAS_STATUS_NOT_INITIALIZED;
  if (bytes > 0 && !kvshard::emu::IsDeviceRange(workspace, bytes)) {
    kvshard::emu::Complain("cublasSetWorkspace: the workspace is not device memory");
    return CUBLAS_STATUS_INVALID_VALUE;
  }
  handle->workspace = workspace;
  handle->workspace_bytes = bytes;
  return CUBLAS_STATUS_SUCCESS;
}

cublasStatus_t cublasSetMathMode(cublasHandle_t handle, cublasMath_t mode) {
  if (!handle) return CUBLAS_STATUS_NOT_INITIALIZED;
  handle->math = mode;
  return CUBLAS_STATUS_SUCCESS;
}

const char* cublasGetStatusName(cublasStatus_t status) {
  switch (status) {
    case CUBLAS_STATUS_SUCCESS: return "CUBLAS_STATUS_SUCCESS";
    case CUBLAS_STATUS_NOT_INITIALIZED: return "CUBLAS_STATUS_NOT_INITIALIZED";
    case CUBLAS_STATUS_ALLOC_FAILED: return "CUBLAS_STATUS_ALLOC_FAILED";
    case CUBLAS_STATUS_INVALID_VALUE: return "CUBLAS_STATUS_INVALID_VALUE";
    case CUBLAS_STATUS_NOT_SUPPORTED: return "CUBLAS_STATUS_NOT_SUPPORTED";
    case CUBLAS_STATUS_EXECUTION_FAILED: return "CUBLAS_STATUS_EXECUTION_FAILED";
    default: return "CUBLAS_STATUS_UNKNOWN";
  }
}

const char* cublasGetStatusString(cublasStatus_t status) {
  switch (status) {
    case CUBLAS_STATUS_SUCCESS: return "success";
    case CUBLAS_STATUS_NOT_INITIALIZED: return "the library was not initialized";
    case CUBLAS_STATUS_ALLOC_FAILED: return "the resource allocation failed";
    case CUBLAS_STATUS_INVALID_VALUE: return "an invalid numeric value was used as an argument";
    case CUBLAS_STATUS_NOT_SUPPORTED: return "the functionality requested is not supported";
    case CUBLAS_STATUS_EXECUTION_FAILED: return "the GPU program failed to execute";
    default: return "unknown error";
  }
}

cublasStatus_t cublasGemmEx(cublasHandle_t handle, cublasOperation_t transa,
                            cublasOperation_t transb, int m, int n, int k, const void* alpha,
                            const void* A, cudaDataType Atype, int lda, const void* B,
                            cudaDataType Btype, int ldb, const void* beta, void* C,
                            cudaDataType Ctype, int ldc, cublasComputeType_t compute,
                            cublasGemmAlgo_t /*algo*/) {
  if (!handle) return CUBLAS_STATUS_NOT_INITIALIZED;
  if (transa != CUBLAS_OP_N && transa != CUBLAS_OP_T) return Invalid("transa not N or T");
  if (transb != CUBLAS_OP_N && transb != CUBLAS_OP_T) return Invalid("transb not N or T");
  if (m < 0 || n < 0 || k < 0) return Invalid("negative dimension");
  const int64_t a_rows = transa == CUBLAS_OP_N ? m : k, a_cols = transa == CUBLAS_OP_N ? k : m;
  const int64_t b_rows = transb == CUBLAS_OP_N ? k : n, b_cols = transb == CUBLAS_OP_N ? n : k;
  if (lda < std::max<int64_t>(1, a_rows)) return Invalid("lda < rows of A");
  if (ldb < std::max<int64_t>(1, b_rows)) return Invalid("ldb < rows of B");
  if (ldc < std::max(1, m)) return Invalid("ldc < m");
  size_t a_size = 0, b_size = 0, c_size = 0;
  if (!ElementSize(Atype, &a_size) || !ElementSize(Btype, &b_size) ||
      !ElementSize(Ctype, &c_size) || Atype != Btype) {
    kvshard::emu::Complain("cublasGemmEx: unsupported type combination");
    return CUBLAS_STATUS_NOT_SUPPORTED;
  }
  if (compute != CUBLAS_COMPUTE_32F && compute != CUBLAS_COMPUTE_32F_PEDANTIC &&
      compute != CUBLAS_COMPUTE_32F_FAST_16F && compute != CUBLAS_COMPUTE_32F_FAST_16BF &&
      compute != CUBLAS_COMPUTE_32F_FAST_TF32) {
    kvshard::emu::Complain("cublasGemmEx: compute type other than 32F");
    return CUBLAS_STATUS_NOT_SUPPORTED;
  }
  if (!alpha || !beta) return Invalid("null alpha or beta");
  if (m == 0 || n == 0) return CUBLAS_STATUS_SUCCESS;
  const size_t a_span = Span(a_rows, a_cols, lda, a_size),
               b_span = Span(b_rows, b_cols, ldb, b_size);
  const size_t c_span = Span(m, n, ldc, c_size);
  if ((a_span && !kvshard::emu::IsDeviceRange(A, a_span)) ||
      (b_span && !kvshard::emu::IsDeviceRange(B, b_span)) ||
      !kvshard::emu::IsDeviceRange(C, c_span)) {
    kvshard::emu::Complain("cublasGemmEx: an operand runs outside its device allocation (A " +
                           std::to_string(a_span) + " bytes, B " + std::to_string(b_span) +
                           " bytes, C " + std::to_string(c_span) + " bytes)");
    return CUBLAS_STATUS_EXECUTION_FAILED;
  }
  const float al = *static_cast<const float*>(alpha), be = *static_cast<const float*>(beta);
  const cudaError_t rc = kvshard::emu::Enqueue(handle->stream, [=]() {
    std::vector<float> a_row(static_cast<size_t>(k));
    for (int i = 0; i < m; ++i) {
      for (int p = 0; p < k; ++p) {  // op(A)[i][p]
        a_row[p] = transa == CUBLAS_OP_N ? Load(A, Atype, static_cast<int64_t>(p) * lda + i)
                                         : Load(A, Atype, static_cast<int64_t>(i) * lda + p);
      }
      for (int j = 0; j < n; ++j) {
        float acc = 0.0f;
        for (int p = 0; p < k; ++p) {  // op(B)[p][j]
          const float b = transb == CUBLAS_OP_N ? Load(B, Btype, static_cast<int64_t>(j) * ldb + p)
                                                : Load(B, Btype, static_cast<int64_t>(p) * ldb + j);
          acc += a_row[p] * b;
        }
        const int64_t c = static_cast<int64_t>(j) * ldc + i;
        // beta == 0 does not read C (it may be uninitialised), as in BLAS.
        Store(C, Ctype, c, be == 0.0f ? al * acc : al * acc + be * Load(C, Ctype, c));
      }
    }
    return cudaSuccess;
  });
  return rc == cudaSuccess ? CUBLAS_STATUS_SUCCESS : CUBLAS_STATUS_EXECUTION_FAILED;
}

}  // extern "C"
