// Runs a ConvFormer compiled by AOTInductor (`convformer-fast export --format aoti`) from C++.
//
//   convformer_aoti MODEL.pt2                        a forward on random keypoints (batch 4)
//   convformer_aoti MODEL.pt2 INPUT.bin EXPECTED.bin a forward on INPUT, compared with EXPECTED
//
// INPUT.bin and EXPECTED.bin are raw little-endian float32 arrays, (B, T, J, 2) and
// (B, 1, J, 3) (make_reference.py writes them from Python); B follows from INPUT's size and
// T, J from the package's metadata. Exit code 0 when every output is within
// |out - expected| <= atol + rtol * |expected|, 1 otherwise, 2 on bad input.
//
// The package of a `cpu`-backend model calls convformer_fast's C++ ops through libtorch's
// dispatcher: this program links libconvformer_fast_ops with --no-as-needed, so that the
// library's TORCH_LIBRARY registrations run when the program starts.

#include <torch/torch.h>
#include <torch/csrc/inductor/aoti_package/model_package_loader.h>

#include <chrono>
#include <filesystem>
#include <fstream>
#include <iostream>
#include <string>

namespace {

constexpr double kAtol = 1e-4;  // fp32: the compiled code sums in another order than eager
constexpr double kRtol = 1e-4;

int64_t metadata_int(const std::unordered_map<std::string, std::string>& metadata, const std::string& key) {
  auto found = metadata.find(key);
  if (found == metadata.end()) {
    throw std::runtime_error("the package's metadata has no '" + key +
                             "': export it with `convformer-fast export --format aoti`");
  }
  return std::stoll(found->second);
}

torch::Tensor read_floats(const std::string& path, int64_t values_per_sample, const char* what) {
  const auto bytes = static_cast<int64_t>(std::filesystem::file_size(path));
  const int64_t sample_bytes = values_per_sample * static_cast<int64_t>(sizeof(float));
  if (bytes == 0 || bytes % sample_bytes != 0) {
    throw std::runtime_error(std::string(what) + " " + path + ": " + std::to_string(bytes) +
                             " bytes, expected a positive multiple of " + std::to_string(sample_bytes) +
                             " (float32 samples of " + std::to_string(values_per_sample) + " values)");
  }
  return torch::from_file(path, /*shared=*/false, bytes / static_cast<int64_t>(sizeof(float)), torch::kFloat);
}

}  // namespace

int main(int argc, char** argv) {
  if (argc != 2 && argc != 4) {
    std::cerr << "usage: " << argv[0] << " MODEL.pt2 [INPUT.bin EXPECTED.bin]\n";
    return 2;
  }
  torch::NoGradGuard no_grad;
  try {
    torch::inductor::AOTIModelPackageLoader loader(argv[1]);
    const auto metadata = loader.get_metadata();
    const int64_t frames = metadata_int(metadata, "num_frames");
    const int64_t joints = metadata_int(metadata, "num_joints");

    torch::Tensor x, expected;
    if (argc == 4) {
      x = read_floats(argv[2], frames * joints * 2, "INPUT").reshape({-1, frames, joints, 2});
      expected = read_floats(argv[3], joints * 3, "EXPECTED").reshape({-1, 1, joints, 3});
      if (expected.size(0) != x.size(0)) {
        std::cerr << "EXPECTED holds " << expected.size(0) << " samples, INPUT " << x.size(0) << "\n";
        return 2;
      }
    } else {
      x = torch::randn({4, frames, joints, 2});
    }

    const auto start = std::chrono::steady_clock::now();
    torch::Tensor out = loader.run({x})[0];
    const double ms = std::chrono::duration<double, std::milli>(std::chrono::steady_clock::now() - start).count();
    std::cout << "convformer_aoti: input " << x.sizes() << " -> output " << out.sizes() << " in " << ms
              << " ms (first call), backend " << metadata.at("backend") << "\n";
    if (!expected.defined()) {
      return 0;
    }
    const auto deviation = (out - expected).abs();
    const double worst = deviation.max().item<double>();
    const bool ok = out.sizes() == expected.sizes() &&
                    (deviation <= kAtol + kRtol * expected.abs()).all().item<bool>();
    std::cout << "max |C++ - Python| = " << worst << " (atol " << kAtol << ", rtol " << kRtol << "): "
              << (ok ? "OK" : "MISMATCH") << "\n";
    return ok ? 0 : 1;
  } catch (const c10::Error& error) {  // e.g. "Could not find schema for convformer_fast::..."
    std::cerr << "convformer_aoti: error: " << error.what_without_backtrace() << "\n";
    return 2;
  } catch (const std::exception& error) {
    std::cerr << "convformer_aoti: error: " << error.what() << "\n";
    return 2;
  }
}
