// FreeFlux (controls/freeflux.cpp) against its own code (wtybest/FreeFlux, scripts/reference/freeflux_official.py)
// on the tiny FLUX of the goldens: the non-rigid and the add-object edits (source, target to a level, the derived
// mask cell for cell); the background mode (its official mask needs SAM2) by its effect; bad input.
#include <fstream>
#include <tuple>

#include <gtest/gtest.h>
#include <nlohmann/json.hpp>

#include "core/image_io.h"
#include "tests/test_util.h"

namespace mmdit {
namespace {
namespace fs = std::filesystem;

fs::path tiny_flux() { return fs::path(MMDIT_GOLDEN_DIR) / "controls" / "tiny-flux-dev"; }

int max_diff(const Image& a, const Image& b) {
  if (a.pixels.size() != b.pixels.size()) return 256;
  int m = 0;
  for (size_t i = 0; i < a.pixels.size(); ++i) m = std::max(m, std::abs(int(a.pixels[i]) - int(b.pixels[i])));
  return m;
}

TEST(FreeFlux, EqualsTheOfficialCode) {
  const fs::path dir = test::source_dir() / "tests" / "data" / "freeflux";
  std::ifstream in(dir / "cases.json");
  const auto cases = nlohmann::json::parse(in);
  ASSERT_EQ(cases.size(), 2u);
  for (const auto& c : cases) {
    const std::string name = c["name"];
    SCOPED_TRACE(name);
    const auto out = test::temp_dir("freeflux_" + name);
    const bool mask = c.contains("mask");
    auto r = test::run_mmdit("edit -q --model " + tiny_flux().string() + " " + c["args"].get<std::string>() + " -o " +
                                 (out / "t.png").string() + " --source-output " + (out / "s.png").string() +
                                 (mask ? " --mask-output " + (out / "m.png").string() : ""),
                             "freeflux_" + name);
    ASSERT_EQ(r.exit_code, 0) << r.err;
    for (auto [ours, theirs] : {std::pair{"s.png", "source"}, {"t.png", "target"}})
      EXPECT_LE(max_diff(read_png(out / ours), read_png(dir / c[theirs].get<std::string>())), 1) << theirs;
    // The edit is not the source: the injection leaves the target its own prompt's changes.
    EXPECT_GT(max_diff(read_png(dir / c["target"].get<std::string>()), read_png(dir / c["source"].get<std::string>())), 1);
    if (!mask) continue;
    // Their mask: the token grid, white = the added object's region; ours: the output size, white = edited (the same).
    Image theirs = read_png(dir / c["mask"].get<std::string>()), ours = read_png(out / "m.png");
    const int cell = ours.width / theirs.width;
    int differ = 0, white = 0;
    for (int y = 0; y < theirs.height; ++y)
      for (int x = 0; x < theirs.width; ++x) {
        const bool t = theirs.pixels[size_t(y * theirs.width + x) * theirs.channels] > 127;
        const bool o = ours.pixels[size_t((y * cell + cell / 2) * ours.width + x * cell + cell / 2) * ours.channels] > 127;
        differ += t != o, white += t;
      }
    EXPECT_EQ(differ, 0);
    EXPECT_GT(white, 0);
    EXPECT_LT(white, theirs.width * theirs.height);
  }
}

// Background replacement: the object's V is the source's (the foreground of the map of --edit-words), the rest
// follows the target. The mask marks some cells, and the target differs from the source.
TEST(FreeFlux, BackgroundKeepsTheNamedObject) {
  const auto out = test::temp_dir("freeflux_background");
  auto r = test::run_mmdit("edit -q --model " + tiny_flux().string() + " --steps 4 --width 128 --height 128 --seed 93 "
                           "--source-prompt 'a small red circle above a blue square' --prompt 'a snowy day' "
                           "--edit-method freeflux-background --edit-words circle -o " + (out / "t.png").string() +
                           " --source-output " + (out / "s.png").string() + " --mask-output " + (out / "m.png").string(),
                           "freeflux_bg");
  ASSERT_EQ(r.exit_code, 0) << r.err;
  Image m = read_png(out / "m.png");
  int white = 0;
  for (auto v : m.pixels) white += v > 127;
  EXPECT_GT(white, 0);
  EXPECT_LT(size_t(white), m.pixels.size());
  EXPECT_GT(max_diff(read_png(out / "t.png"), read_png(out / "s.png")), 1);
}

TEST(FreeFlux, BadInputExitsTwoWithOneLineAndNoOutput) {
  const auto dir = test::temp_dir("freeflux_bad");
  const std::string out = (dir / "x.png").string();
  const std::string flux = "edit --model " + tiny_flux().string() + " --source-prompt 'a red star' --prompt 'a blue star' ";
  const std::string sd3 = (fs::path(MMDIT_GOLDEN_DIR) / "controls" / "tiny-sd3").string();
  const std::vector<std::pair<std::string, std::string>> bad = {
      {"edit --model " + sd3 + " --source-prompt 'a red star' --prompt 'a blue star' --edit-method freeflux-nonrigid",
       "FreeFlux's layers are FLUX's"},
      {flux + "--edit-method freeflux-background", "--edit-words: freeflux-background needs"},
      {flux + "--edit-method freeflux-nonrigid --mask-output " + (dir / "m.png").string(), "uses no mask"},
      {"edit --model " + tiny_flux().string() + " --source-prompt 'a red star' --prompt 'a red star' "
       "--edit-method freeflux-add", "the target adds no word"},
      {flux + "--edit-method freeflux-add --edit-words moon", "'moon' is not in the target prompt"},
  };
  for (const auto& [args, message] : bad) {
    test::expect_input_error(args + " --steps 2 -o " + out, message, out, "bad_freeflux");
  }
}

}  // namespace
}  // namespace mmdit
