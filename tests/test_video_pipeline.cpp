// A video from `mmdit generate` end to end: the MP4 opens in ffprobe with the right frame count, size and
// rate, and its decoded first frame is close to the PNG frame the same generation writes.
#include <cstdio>
#include <fstream>

#include <gtest/gtest.h>
#include <nlohmann/json.hpp>

#include "core/image_io.h"
#include "tests/test_util.h"

namespace mmdit {
namespace {
namespace fs = std::filesystem;

std::string capture(const std::string& cmd) {
  std::string out;
  if (FILE* p = ::popen(cmd.c_str(), "r")) {
    char buf[4096];
    size_t n;
    while ((n = std::fread(buf, 1, sizeof buf, p)) > 0) out.append(buf, n);
    ::pclose(p);
  }
  return out;
}

TEST(VideoPipeline, Mp4MatchesTheFramesAndProbesRight) {
  if (std::system("command -v ffprobe >/dev/null 2>&1") != 0) GTEST_SKIP() << "ffprobe not installed";
  const fs::path golden = fs::path(MMDIT_GOLDEN_DIR) / "cogvideox";
  std::ifstream in(golden / "cases.json");
  const auto c = nlohmann::json::parse(in)[0];
  const auto& p = c["params"];
  const int w = p["width"], h = p["height"], frames = p["frames"];
  auto dir = test::temp_dir("video_pipeline");
  const std::string args = "generate -q --model " + (golden / c["model"].get<std::string>()).string() + " --prompt '" +
                           p["prompt"].get<std::string>() + "' --seed " + std::to_string(p["seed"].get<int>()) +
                           " --steps " + std::to_string(p["steps"].get<int>()) + " --cfg " +
                           std::to_string(p["cfg"].get<double>()) + " --frames " + std::to_string(frames) +
                           " --width " + std::to_string(w) + " --height " + std::to_string(h);
  auto mp4 = test::run_mmdit(args + " --fps 8 -o " + (dir / "v.mp4").string(), "video_mp4");
  ASSERT_EQ(mp4.exit_code, 0) << mp4.err;
  auto png = test::run_mmdit(args + " -o " + (dir / "f_%03d.png").string(), "video_png");
  ASSERT_EQ(png.exit_code, 0) << png.err;

  auto probe = nlohmann::json::parse(capture(
      "ffprobe -v error -count_frames -show_entries stream=nb_read_frames,width,height,r_frame_rate,codec_name "
      "-of json '" + (dir / "v.mp4").string() + "'"));
  const auto& s = probe["streams"][0];
  EXPECT_EQ(s["codec_name"], "h264");
  EXPECT_EQ(s["width"], w);
  EXPECT_EQ(s["height"], h);
  EXPECT_EQ(s["r_frame_rate"], "8/1");
  EXPECT_EQ(s["nb_read_frames"], std::to_string(frames));

  // First frame decoded to RGB against the PNG frame 0 (which itself equals diffusers' within 1 level).
  const std::string raw = capture("ffmpeg -v error -i '" + (dir / "v.mp4").string() +
                                  "' -vframes 1 -f rawvideo -pix_fmt rgb24 -");
  Image ref = read_png(dir / "f_000.png");
  ASSERT_EQ(raw.size(), ref.pixels.size());
  // The random-model frame is pixel noise, which 4:2:0 chroma subsampling cannot keep (about 9 levels of RGB
  // error even at crf 0), so compare luma (BT.709) per pixel and each channel's mean.
  double luma = 0, mean_a[3] = {0, 0, 0}, mean_b[3] = {0, 0, 0};
  const size_t n = raw.size() / 3;
  for (size_t i = 0; i < n; ++i) {
    double ya = 0, yb = 0;
    for (int c = 0; c < 3; ++c) {
      const double a = uint8_t(raw[3 * i + c]), b = ref.pixels[3 * i + c];
      const double k = c == 0 ? 0.2126 : c == 1 ? 0.7152 : 0.0722;
      ya += k * a;
      yb += k * b;
      mean_a[c] += a / n;
      mean_b[c] += b / n;
    }
    luma += std::abs(ya - yb) / n;
  }
  EXPECT_LT(luma, 4.0);  // measured 2.1 at crf 18
  for (int c = 0; c < 3; ++c) EXPECT_LT(std::abs(mean_a[c] - mean_b[c]), 3.0) << "channel " << c;  // measured <= 1.4
}

// A video job in a job file writes its MP4 like `generate` does.
TEST(VideoPipeline, JobFileWritesVideo) {
  const fs::path model = fs::path(MMDIT_GOLDEN_DIR) / "cogvideox" / "tiny-cogvideox-2b";
  auto dir = test::temp_dir("video_job");
  nlohmann::json jobs = {{"defaults", {{"model", model.string()}, {"frames", 5}, {"steps", 2}, {"width", 48}, {"height", 32}}},
                         {"jobs", {{{"prompt", "a red ball"}, {"seed", 1}, {"output", "ball-{seed}.mp4"}},
                                   {{"prompt", "a blue cube"}, {"seed", 2}, {"output", "cube_%02d.png"}}}}};
  std::ofstream(dir / "jobs.json") << jobs.dump();
  auto r = test::run_mmdit("run -q " + (dir / "jobs.json").string(), "video_job");
  ASSERT_EQ(r.exit_code, 0) << r.err;
  EXPECT_TRUE(fs::exists(dir / "ball-1.mp4"));
  EXPECT_TRUE(fs::exists(dir / "cube_00.png"));
  EXPECT_TRUE(fs::exists(dir / "cube_04.png"));
}

}  // namespace
}  // namespace mmdit
