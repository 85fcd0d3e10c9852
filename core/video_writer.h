// Video output (torch-free): a list of frames becomes an H.264 MP4 or a numbered PNG sequence.
//
// write_video(path, frames, options) chooses the output by the path:
//   - `*.mp4` (any case): H.264 (libx264, preset medium, options.crf), yuv420p, BT.709 limited range
//     (RGB -> YUV by libswscale with that matrix and range; the stream is tagged bt709/tv), time base
//     1/fps with frame i at pts i, `+faststart` (moov atom first, so it plays while downloading).
//     options.metadata becomes MP4 (iTunes) tags that ffprobe shows as format_tags; the keys must be
//     ones the MP4 muxer stores: see kVideoMetadataKeys. Suggested use, matching the PNG chunks:
//     {"comment": the human-readable "parameters" text, "description": the JSON of the request}.
//     Written atomically: encoded into a dot-named temp file next to the target (the muxer is chosen
//     by name, not by the temp file's extension), fsynced, then renamed; nothing is left on failure.
//     Width and height must be even (yuv420p halves chroma): odd sizes are a ShapeError, not padded,
//     because a silently resized video would not match the requested --width/--height (every model's
//     sizes are multiples of 8 or 16 anyway).
//     Without FFmpeg (built with MMDIT_HAVE_FFMPEG=0) `.mp4` is a UsageError that suggests a PNG
//     pattern instead.
//   - A printf pattern in the file name, e.g. `out/frame_%03d.png`: frame i is written as PNG to
//     expand_frame_pattern(path, i) with write_png (each file atomic, options.metadata as text chunks
//     plus "frame" = "i of N"). Frames count from 0, like batch_index in the PNG metadata; `ffmpeg -i
//     frame_%03d.png` finds a sequence that starts at 0 by itself. The pattern must hold exactly one
//     integer conversion `%d`, `%Nd` or `%0Nd` (N <= 9; `%%` is a literal percent sign) and end in
//     `.png`. Only the file name is a pattern; the folder part is taken literally. If a frame fails,
//     the frames this call already wrote are removed.
//   - Anything else (`.gif`, `.webm`, `.png` without a pattern, ...) is a UsageError naming the
//     supported outputs.
// Errors: UsageError (bad path/pattern/options), FileError (missing output folder, cannot create or
// rename), ShapeError (no frames, frames of different sizes or channel counts, odd MP4 sizes),
// RuntimeFailure (any FFmpeg failure, one line with av_strerror's text). Frames are 8-bit Images with
// 1 (gray), 3 (RGB) or 4 (RGBA; alpha is dropped for MP4) channels.
//
// CLI mapping (added where the CLI is wired): --fps -> VideoOptions::fps, --crf -> VideoOptions::crf.
#pragma once
#include <filesystem>
#include <map>
#include <string>
#include <vector>

#include "core/image_io.h"

namespace mmdit {

struct VideoOptions {
  int fps = 8;    // frames per second, 1..240
  int crf = 18;   // x264 constant rate factor, 0 (lossless) .. 51 (worst); 18 is visually lossless
  std::map<std::string, std::string> metadata;  // MP4: tag -> value (kVideoMetadataKeys); PNG: text chunks
};

// The MP4 tags write_video accepts (others would be dropped silently by the muxer, so they are a
// UsageError): title, artist, date, comment, description, synopsis, copyright, genre.
extern const std::vector<std::string> kVideoMetadataKeys;

void write_video(const std::filesystem::path& path, const std::vector<Image>& frames, const VideoOptions& options);

// True if the file name of `path` holds a printf conversion (a '%' that is not part of "%%"). Such a
// path is meant as a frame pattern; write_video still validates it (see above).
bool is_frame_pattern(const std::string& path);
// The path of frame `index` (>= 0) for a pattern: `out/f_%03d.png`, 7 -> `out/f_007.png`. Throws
// UsageError if the pattern does not hold exactly one integer conversion.
std::filesystem::path expand_frame_pattern(const std::string& pattern, int index);

// Whether this build can write MP4 (MMDIT_HAVE_FFMPEG).
bool video_mp4_available();

}  // namespace mmdit
