#include "shard/cuda/device_weights.h"

#include <string>

#include "common/cuda/cuda_check.h"

namespace kvshard::cuda {
namespace {

// f32 host values -> f32 on the device (the norm weights).
StatusOr<DeviceBuffer> Upload(const std::vector<float>& values, const std::string& what,
                              int64_t* bytes) {
  const size_t size = values.size() * sizeof(float);
  KVS_ASSIGN_OR_RETURN(DeviceBuffer buffer, DeviceBuffer::Allocate(size, what.c_str()));
  if (size == 0) return buffer;
  KVS_RETURN_IF_ERROR(
      KVS_CUDA(cudaMemcpy(buffer.get(), values.data(), size, cudaMemcpyHostToDevice)));
  *bytes += static_cast<int64_t>(size);
  return buffer;
}

// A host matrix -> `dtype` on the device: copied as it is when it is held in `dtype` already (what
// LoadShardWeights gives the CUDA backend), else converted through f32.
StatusOr<DeviceBuffer> Upload(const HostMatrix& m, DType dtype, const std::string& what,
                              int64_t* bytes) {
  const size_t size = static_cast<size_t>(m.numel()) * DTypeSize(dtype);
  KVS_ASSIGN_OR_RETURN(DeviceBuffer buffer, DeviceBuffer::Allocate(size, what.c_str()));
  if (size == 0) return buffer;
  const void* src = m.data();
  std::vector<std::byte> converted;
  if (m.dtype() != dtype) {
    converted.resize(size);
    const std::vector<float> wide = m.ToF32();
    ConvertFromF32(dtype, wide.data(), converted.data(), wide.size());
    src = converted.data();
  }
  KVS_RETURN_IF_ERROR(KVS_CUDA(cudaMemcpy(buffer.get(), src, size, cudaMemcpyHostToDevice)));
  *bytes += static_cast<int64_t>(size);
  return buffer;
}

}  // namespace

StatusOr<DeviceWeights> UploadWeights(const ShardWeights& host, DType dtype) {
  DeviceWeights w;
  w.dtype = dtype;
  KVS_ASSIGN_OR_RETURN(w.embedding, Upload(host.embedding, dtype, "embedding", &w.bytes));
  KVS_ASSIGN_OR_RETURN(w.final_norm, Upload(host.final_norm, "final norm", &w.bytes));
  KVS_ASSIGN_OR_RETURN(w.lm_head, Upload(host.lm_head, dtype, "output head", &w.bytes));
  for (size_t i = 0; i < host.layers.size(); ++i) {
    const LayerWeights& h = host.layers[i];
    const std::string p = "layer " + std::to_string(i) + " ";
    DeviceLayerWeights d;
    KVS_ASSIGN_OR_RETURN(d.attn_norm, Upload(h.attn_norm, p + "attn_norm", &w.bytes));
    KVS_ASSIGN_OR_RETURN(d.wq, Upload(h.wq, dtype, p + "wq", &w.bytes));
    KVS_ASSIGN_OR_RETURN(d.wk, Upload(h.wk, dtype, p + "wk", &w.bytes));
    KVS_ASSIGN_OR_RETURN(d.wv, Upload(h.wv, dtype, p + "wv", &w.bytes));
    KVS_ASSIGN_OR_RETURN(d.wo, Upload(h.wo, dtype, p + "wo", &w.bytes));
    KVS_ASSIGN_OR_RETURN(d.ffn_norm, Upload(h.ffn_norm, p + "ffn_norm", &w.bytes));
    KVS_ASSIGN_OR_RETURN(d.w_gate, Upload(h.w_gate, dtype, p + "w_gate", &w.bytes));
    KVS_ASSIGN_OR_RETURN(d.w_up, Upload(h.w_up, dtype, p + "w_up", &w.bytes));
    KVS_ASSIGN_OR_RETURN(d.w_down, Upload(h.w_down, dtype, p + "w_down", &w.bytes));
    w.layers.push_back(std::move(d));
  }
  return w;
}

}  // namespace kvshard::cuda
