// Video output: H.264 MP4 checked with ffprobe/ffmpeg (frame count, size, rate, codec, colour tags,
// metadata, faststart, decode error), PNG frame sequences, and the one-line errors.
#include <algorithm>
#include <cmath>
#include <cstdio>
#include <fstream>

#include <gtest/gtest.h>
#include <nlohmann/json.hpp>

#include "core/errors.h"
#include "core/image_io.h"
#include "core/video_writer.h"
#include "tests/test_util.h"

namespace mmdit {
namespace {
namespace fs = std::filesystem;

constexpr int kW = 64, kH = 48, kFrames = 9;

// A red triangle wave that scrolls 4 px a frame, a vertical gradient in green, and an orange 12x12
// square moving diagonally by (4, 2) px: every frame differs, with smooth areas and sharp edges. Edges
// sit on even pixels: an edge inside a 2x2 chroma block of yuv420p cannot be kept by any 4:2:0 codec
// (a red 252|0 step there decodes ~150 levels off), which would test the format, not the writer.
std::vector<Image> make_frames(int n = kFrames, int w = kW, int h = kH, int channels = 3) {
  std::vector<Image> frames;
  for (int t = 0; t < n; ++t) {
    Image im;
    im.width = w;
    im.height = h;
    im.channels = channels;
    im.pixels.resize(size_t(w) * h * channels);
    for (int y = 0; y < h; ++y)
      for (int x = 0; x < w; ++x) {
        const int v = (x + 4 * t) % 64;
        uint8_t rgb[3] = {uint8_t(v < 32 ? v * 8 : (63 - v) * 8), uint8_t(y * 255 / std::max(1, h - 1)), 96};
        const int sx = 4 + 4 * t, sy = 2 + 2 * t;
        if (x >= sx && x < sx + 12 && y >= sy && y < sy + 12) rgb[0] = 240, rgb[1] = 140, rgb[2] = 20;
        uint8_t* p = &im.pixels[(size_t(y) * w + x) * channels];
        for (int c = 0; c < channels; ++c) p[c] = c < 3 ? rgb[c] : 255;
      }
    frames.push_back(std::move(im));
  }
  return frames;
}

bool have_tool(const std::string& name) {
  return std::system(("command -v " + name + " >/dev/null 2>&1").c_str()) == 0;
}

// stdout of a shell command (binary-safe); exit code in *rc.
std::string run_capture(const std::string& cmd, int* rc) {
  std::string out;
  FILE* p = ::popen(cmd.c_str(), "r");
  if (!p) {
    *rc = -1;
    return out;
  }
  char buf[65536];
  size_t n;
  while ((n = std::fread(buf, 1, sizeof buf, p)) > 0) out.append(buf, n);
  int status = ::pclose(p);
  *rc = WIFEXITED(status) ? WEXITSTATUS(status) : -1;
  return out;
}

std::vector<std::string> listing(const fs::path& dir) {
  std::vector<std::string> names;
  for (const auto& e : fs::directory_iterator(dir)) names.push_back(e.path().filename().string());
  std::sort(names.begin(), names.end());
  return names;
}

template <class E, class F>
std::string expect_error(F&& f) {
  try {
    f();
  } catch (const E& e) {
    std::string m = e.what();
    EXPECT_EQ(m.find('\n'), std::string::npos) << "not one line: " << m;
    return m;
  } catch (const std::exception& e) {
    ADD_FAILURE() << "wrong exception type: " << e.what();
    return "";
  }
  ADD_FAILURE() << "no exception";
  return "";
}

#define SKIP_WITHOUT_FFMPEG()                                                       \
  do {                                                                              \
    if (!video_mp4_available()) GTEST_SKIP() << "built without FFmpeg";             \
    if (!have_tool("ffprobe") || !have_tool("ffmpeg")) GTEST_SKIP() << "no ffprobe"; \
  } while (0)

const std::string kComment = "a red fox in snow\nSteps: 28, Sampler: flow-match euler, CFG scale: 4.5, Seed: 7";
const std::string kDescription = R"({"model":"sd3.5-medium","prompt":"a red fox in snow — ünïcode","seed":7})";

TEST(Video, Mp4StreamFramesRateColourAndMetadata) {
  SKIP_WITHOUT_FFMPEG();
  const fs::path dir = test::temp_dir("video_mp4");
  const fs::path out = dir / "clip.mp4";
  VideoOptions opt;
  opt.fps = 8;
  opt.crf = 18;
  opt.metadata = {{"comment", kComment}, {"description", kDescription}};
  write_video(out, make_frames(), opt);
  EXPECT_EQ(listing(dir), std::vector<std::string>{"clip.mp4"});  // no temp file left

  int rc = 0;
  const std::string js = run_capture(
      "ffprobe -v error -count_frames -show_entries "
      "stream=nb_read_frames,width,height,r_frame_rate,avg_frame_rate,codec_name,pix_fmt,color_range,color_space,"
      "color_transfer,color_primaries,time_base:format_tags -of json '" + out.string() + "'", &rc);
  ASSERT_EQ(rc, 0) << js;
  auto j = nlohmann::json::parse(js);
  ASSERT_EQ(j["streams"].size(), 1u) << js;
  const auto& s = j["streams"][0];
  EXPECT_EQ(s["nb_read_frames"], "9");
  EXPECT_EQ(s["width"], kW);
  EXPECT_EQ(s["height"], kH);
  EXPECT_EQ(s["r_frame_rate"], "8/1");
  EXPECT_EQ(s["avg_frame_rate"], "8/1");
  EXPECT_EQ(s["codec_name"], "h264");
  EXPECT_EQ(s["pix_fmt"], "yuv420p");
  EXPECT_EQ(s["color_range"], "tv");
  EXPECT_EQ(s["color_space"], "bt709");
  EXPECT_EQ(s["color_transfer"], "bt709");
  EXPECT_EQ(s["color_primaries"], "bt709");
  const auto& tags = j["format"]["tags"];
  EXPECT_EQ(tags.value("comment", ""), kComment) << js;
  EXPECT_EQ(tags.value("description", ""), kDescription) << js;

  // Timestamps: frame i at i/8 s, 9 frames -> 1.125 s.
  const std::string ts = run_capture("ffprobe -v error -select_streams v:0 -show_entries packet=pts_time -of csv=p=0 '" +
                                         out.string() + "' | sort -g | tr '\\n' ' '", &rc);
  ASSERT_EQ(rc, 0);
  EXPECT_EQ(ts, "0.000000 0.125000 0.250000 0.375000 0.500000 0.625000 0.750000 0.875000 1.000000 ");
  const std::string dur = run_capture("ffprobe -v error -show_entries format=duration -of csv=p=0 '" + out.string() + "'", &rc);
  EXPECT_NEAR(std::stod(dur), 1.125, 1e-3);

  // +faststart: the moov atom comes before the media data.
  std::ifstream in(out, std::ios::binary);
  const std::string bytes((std::istreambuf_iterator<char>(in)), std::istreambuf_iterator<char>());
  const size_t moov = bytes.find("moov"), mdat = bytes.find("mdat");
  ASSERT_NE(moov, std::string::npos);
  ASSERT_NE(mdat, std::string::npos);
  EXPECT_LT(moov, mdat);
}

// Decoded frames against the PNG frames of the same input. Measured at crf 18 on this 64x48 clip
// (libx264 preset medium, Debian 12 FFmpeg 5.1): see the bounds below.
TEST(Video, Mp4DecodesCloseToThePngFrames) {
  SKIP_WITHOUT_FFMPEG();
  const fs::path dir = test::temp_dir("video_decode");
  const auto frames = make_frames();
  write_video(dir / "clip.mp4", frames, VideoOptions{});
  write_video((dir / "f_%03d.png").string(), frames, VideoOptions{});
  int rc = 0;
  const std::string raw = run_capture(
      "ffmpeg -v error -i '" + (dir / "clip.mp4").string() + "' -f rawvideo -pix_fmt rgb24 -", &rc);
  ASSERT_EQ(rc, 0);
  const size_t frame_bytes = size_t(kW) * kH * 3;
  ASSERT_EQ(raw.size(), frame_bytes * kFrames);
  double worst_mean = 0;
  int worst_max = 0;
  for (int t = 0; t < kFrames; ++t) {
    const Image png = read_png(expand_frame_pattern((dir / "f_%03d.png").string(), t));
    ASSERT_EQ(png.pixels, frames[t].pixels);
    double sum = 0;
    int mx = 0;
    for (size_t i = 0; i < frame_bytes; ++i) {
      const int d = std::abs(int(uint8_t(raw[t * frame_bytes + i])) - int(png.pixels[i]));
      sum += d;
      mx = std::max(mx, d);
    }
    worst_mean = std::max(worst_mean, sum / frame_bytes);
    worst_max = std::max(worst_max, mx);
    if (t == 0) RecordProperty("frame0_mean_abs_error", std::to_string(sum / frame_bytes));
  }
  RecordProperty("worst_mean_abs_error", std::to_string(worst_mean));
  RecordProperty("worst_max_abs_error", std::to_string(worst_max));
  std::printf("decode error over %d frames: mean <= %.3f, max <= %d levels\n", kFrames, worst_mean, worst_max);
  // Measured: mean <= 2.69, max <= 30 (at chroma edges: ffmpeg's rgb24 output upsamples chroma by
  // repetition). Bounds leave room for other x264 builds.
  EXPECT_LE(worst_mean, 4.0);
  EXPECT_LE(worst_max, 48);

  // Colour matrix and range: the inside of the orange square (frame 0: x 4..15, y 2..13), away from
  // its chroma edges, decodes to its RGB: measured (237.5, 137.7, 18.4); decoding it as BT.601 gives
  // red 227.8, a range mix-up far more.
  double avg[3] = {0, 0, 0};
  int n = 0;
  for (int y = 5; y < 11; ++y)
    for (int x = 7; x < 13; ++x, ++n)
      for (int c = 0; c < 3; ++c) avg[c] += uint8_t(raw[(size_t(y) * kW + x) * 3 + c]);
  const double want[3] = {240, 140, 20};
  for (int c = 0; c < 3; ++c) EXPECT_NEAR(avg[c] / n, want[c], 5.0) << "channel " << c;
}

TEST(Video, PngSequenceNamesPixelsAndMetadata) {
  const fs::path dir = test::temp_dir("video_png");
  const auto frames = make_frames();
  VideoOptions opt;
  opt.metadata = {{"parameters", "a fox"}};
  write_video((dir / "frame_%03d.png").string(), frames, opt);
  std::vector<std::string> expected;
  for (int i = 0; i < kFrames; ++i) {
    char name[32];
    std::snprintf(name, sizeof name, "frame_%03d.png", i);
    expected.push_back(name);
  }
  EXPECT_EQ(listing(dir), expected);  // 000..008, nothing else (no temp files)
  EXPECT_EQ(read_png(dir / "frame_004.png").pixels, frames[4].pixels);
  auto text = read_png_text(dir / "frame_008.png");
  EXPECT_EQ(text["parameters"], "a fox");
  EXPECT_EQ(text["frame"], "8 of 9");
}

TEST(Video, FramePatternParsing) {
  EXPECT_TRUE(is_frame_pattern("out/frame_%03d.png"));
  EXPECT_TRUE(is_frame_pattern("%d.png"));
  EXPECT_TRUE(is_frame_pattern("f_%s.png"));  // meant as a pattern; write_video rejects it
  EXPECT_FALSE(is_frame_pattern("out/frame.png"));
  EXPECT_FALSE(is_frame_pattern("100%%.png"));
  EXPECT_FALSE(is_frame_pattern("run_%d/clip.mp4"));  // only the file name is a pattern
  EXPECT_EQ(expand_frame_pattern("out/f_%03d.png", 7), fs::path("out/f_007.png"));
  EXPECT_EQ(expand_frame_pattern("f_%d.png", 12), fs::path("f_12.png"));
  EXPECT_EQ(expand_frame_pattern("f_%4d.png", 3), fs::path("f_   3.png"));
  EXPECT_EQ(expand_frame_pattern("f_%02d.png", 123), fs::path("f_123.png"));
  EXPECT_EQ(expand_frame_pattern("p%%_%02d.png", 1), fs::path("p%_01.png"));
  EXPECT_EQ(expand_frame_pattern("run_%d/f_%d.png", 2), fs::path("run_%d/f_2.png"));
}

TEST(Video, BadPatternsAndOutputsAreOneLineUsageErrors) {
  const fs::path dir = test::temp_dir("video_bad");
  const auto frames = make_frames(2);
  for (const char* bad : {"f_%s.png", "f_%d_%03d.png", "f_%5.png", "f_%-3d.png", "f_%123d.png", "f_%03d.jpg",
                          "f_%03d.mp4", "f_%"}) {
    auto m = expect_error<UsageError>([&] { write_video((dir / bad).string(), frames, VideoOptions{}); });
    EXPECT_NE(m.find(bad), std::string::npos) << m;
  }
  for (const char* bad : {"clip.gif", "clip.webm", "clip.png", "clip"}) {
    auto m = expect_error<UsageError>([&] { write_video(dir / bad, frames, VideoOptions{}); });
    EXPECT_NE(m.find(".mp4"), std::string::npos) << m;
    EXPECT_NE(m.find("frame_%03d.png"), std::string::npos) << m;
  }
  expect_error<UsageError>([&] { expand_frame_pattern("f_%s.png", 0); });
  expect_error<UsageError>([&] { expand_frame_pattern("f.png", 0); });
  EXPECT_TRUE(listing(dir).empty());
}

TEST(Video, BadFramesAndOptions) {
  const fs::path dir = test::temp_dir("video_shapes");
  expect_error<ShapeError>([&] { write_video((dir / "a_%d.png").string(), {}, VideoOptions{}); });
  auto mixed = make_frames(3);
  mixed[2] = make_frames(1, 32, 32)[0];
  expect_error<ShapeError>([&] { write_video((dir / "a_%d.png").string(), mixed, VideoOptions{}); });
  if (video_mp4_available()) {  // without FFmpeg any .mp4 is the UsageError tested below
    expect_error<ShapeError>([&] { write_video(dir / "a.mp4", {}, VideoOptions{}); });
    expect_error<ShapeError>([&] { write_video(dir / "a.mp4", mixed, VideoOptions{}); });
    auto m = expect_error<ShapeError>([&] { write_video(dir / "odd.mp4", make_frames(2, 63, 48), VideoOptions{}); });
    EXPECT_NE(m.find("63x48"), std::string::npos) << m;
    VideoOptions o;
    o.fps = 0;
    expect_error<UsageError>([&] { write_video(dir / "a.mp4", make_frames(2), o); });
    o = VideoOptions{};
    o.crf = 52;
    expect_error<UsageError>([&] { write_video(dir / "a.mp4", make_frames(2), o); });
    o = VideoOptions{};
    o.metadata = {{"parameters", "x"}};  // not an MP4 tag: the muxer would drop it silently
    m = expect_error<UsageError>([&] { write_video(dir / "a.mp4", make_frames(2), o); });
    EXPECT_NE(m.find("'parameters'"), std::string::npos) << m;
  }
  EXPECT_TRUE(listing(dir).empty());
}

TEST(Video, GrayAndRgbaFramesEncode) {
  SKIP_WITHOUT_FFMPEG();
  const fs::path dir = test::temp_dir("video_channels");
  write_video(dir / "rgba.mp4", make_frames(3, 32, 16, 4), VideoOptions{});
  write_video(dir / "gray.mp4", make_frames(3, 32, 16, 1), VideoOptions{});
  for (const char* f : {"rgba.mp4", "gray.mp4"}) {
    int rc = 0;
    auto n = run_capture("ffprobe -v error -count_frames -show_entries stream=nb_read_frames -of csv=p=0 '" +
                             (dir / f).string() + "'", &rc);
    EXPECT_EQ(rc, 0);
    EXPECT_EQ(n, "3\n") << f;
  }
}

TEST(Video, MissingFolderIsFileErrorAndLeavesNothing) {
  const fs::path dir = test::temp_dir("video_missing");
  const auto frames = make_frames(2);
  if (video_mp4_available()) {
    auto m = expect_error<FileError>([&] { write_video(dir / "nope" / "clip.mp4", frames, VideoOptions{}); });
    EXPECT_NE(m.find("nope"), std::string::npos) << m;
  }
  expect_error<FileError>([&] { write_video((dir / "nope" / "f_%03d.png").string(), frames, VideoOptions{}); });
  EXPECT_TRUE(listing(dir).empty());
  EXPECT_FALSE(fs::exists(dir / "nope"));
}

TEST(Video, FailedRenameLeavesNoTempFile) {
  if (!video_mp4_available()) GTEST_SKIP() << "built without FFmpeg";
  const fs::path dir = test::temp_dir("video_rename");
  fs::create_directories(dir / "taken.mp4" / "inside");  // a non-empty folder where the file should go
  expect_error<FileError>([&] { write_video(dir / "taken.mp4", make_frames(2), VideoOptions{}); });
  EXPECT_EQ(listing(dir), std::vector<std::string>{"taken.mp4"});
  EXPECT_TRUE(fs::is_directory(dir / "taken.mp4"));
}

TEST(Video, WithoutFfmpegMp4IsAUsageError) {
  if (video_mp4_available()) GTEST_SKIP() << "this build has FFmpeg";
  const fs::path dir = test::temp_dir("video_noffmpeg");
  auto m = expect_error<UsageError>([&] { write_video(dir / "clip.mp4", make_frames(2), VideoOptions{}); });
  EXPECT_EQ(m, "this mmdit was built without FFmpeg: MP4 output unavailable; write frames with --output "
               "'frame_%03d.png'");
  EXPECT_TRUE(listing(dir).empty());
}

}  // namespace
}  // namespace mmdit
