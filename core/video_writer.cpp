#include "core/video_writer.h"

#include <algorithm>
#include <cctype>
#include <cerrno>
#include <cstring>
#include <fcntl.h>
#include <mutex>
#include <unistd.h>

#include "core/atomic_file.h"
#include "core/errors.h"
#include "core/log.h"

#ifndef MMDIT_HAVE_FFMPEG
#define MMDIT_HAVE_FFMPEG 0
#endif

#if MMDIT_HAVE_FFMPEG
extern "C" {
#include <libavcodec/avcodec.h>
#include <libavformat/avformat.h>
#include <libavutil/dict.h>
#include <libavutil/error.h>
#include <libavutil/log.h>
#include <libavutil/opt.h>
#include <libswscale/swscale.h>
}
#endif

namespace mmdit {
namespace fs = std::filesystem;

const std::vector<std::string> kVideoMetadataKeys = {"title",       "artist",   "date",      "comment",
                                                     "description", "synopsis", "copyright", "genre"};

namespace {

const char* kSupported = "supported video outputs: .mp4 (H.264) or a PNG frame pattern such as 'frame_%03d.png'";

std::string lower(std::string s) {
  for (char& c : s) c = char(std::tolower(static_cast<unsigned char>(c)));
  return s;
}

// One parsed integer conversion in a frame pattern: text before it, zero padding, width, text after.
struct Pattern {
  std::string dir, prefix, suffix;  // prefix/suffix with "%%" already turned into '%'
  bool zero = false;
  int width = 0;
};

// Parses the file-name part of `path`; throws UsageError unless it holds exactly one %d/%Nd/%0Nd.
Pattern parse_pattern(const std::string& path) {
  const fs::path p(path);
  const std::string name = p.filename().string();
  Pattern out;
  out.dir = p.has_parent_path() ? p.parent_path().string() : std::string();
  int conversions = 0;
  std::string* text = &out.prefix;
  for (size_t i = 0; i < name.size(); ++i) {
    if (name[i] != '%') {
      *text += name[i];
      continue;
    }
    if (i + 1 < name.size() && name[i + 1] == '%') {
      *text += '%';
      ++i;
      continue;
    }
    size_t j = i + 1;
    bool zero = false;
    if (j < name.size() && name[j] == '0') zero = true, ++j;
    int width = 0, digits = 0;
    while (j < name.size() && std::isdigit(static_cast<unsigned char>(name[j])) && digits < 2)
      width = width * 10 + (name[j] - '0'), ++j, ++digits;
    if (j >= name.size() || name[j] != 'd' || digits > 1)
      throw UsageError(path + ": bad frame pattern: '%' must start %d, %Nd or %0Nd (N <= 9), or be written %%");
    if (++conversions > 1) throw UsageError(path + ": bad frame pattern: more than one %d conversion");
    out.zero = zero;
    out.width = width;
    text = &out.suffix;
    i = j;
  }
  if (conversions != 1) throw UsageError(path + ": bad frame pattern: no %d conversion in the file name");
  return out;
}

std::string expand(const Pattern& p, int index) {
  std::string num = std::to_string(index);
  if (int(num.size()) < p.width) num.insert(0, size_t(p.width) - num.size(), p.zero ? '0' : ' ');
  return p.prefix + num + p.suffix;
}

// All frames: non-empty, same size and channels, pixel buffers that match. Returns the first frame.
const Image& check_frames(const std::string& path, const std::vector<Image>& frames) {
  if (frames.empty()) throw ShapeError(path + ": no frames to write");
  const Image& f0 = frames[0];
  for (size_t i = 0; i < frames.size(); ++i) {
    const Image& f = frames[i];
    if (f.width <= 0 || f.height <= 0 || (f.channels != 1 && f.channels != 3 && f.channels != 4) ||
        f.pixels.size() != size_t(f.width) * f.height * f.channels)
      throw ShapeError(path + ": frame " + std::to_string(i) + " of " + std::to_string(f.width) + "x" +
                       std::to_string(f.height) + "x" + std::to_string(f.channels) + " does not match its " +
                       std::to_string(f.pixels.size()) + " bytes (need 1, 3 or 4 channels)");
    if (f.width != f0.width || f.height != f0.height || f.channels != f0.channels)
      throw ShapeError(path + ": frame " + std::to_string(i) + " is " + std::to_string(f.width) + "x" +
                       std::to_string(f.height) + "x" + std::to_string(f.channels) + " but frame 0 is " +
                       std::to_string(f0.width) + "x" + std::to_string(f0.height) + "x" + std::to_string(f0.channels));
  }
  return f0;
}

void check_output_folder(const fs::path& path) {
  const fs::path dir = path.has_parent_path() ? path.parent_path() : fs::path(".");
  if (!fs::is_directory(dir)) throw FileError(path.string() + ": output folder " + dir.string() + " does not exist");
}

void write_png_sequence(const std::string& path, const std::vector<Image>& frames, const VideoOptions& options) {
  if (lower(fs::path(path).extension().string()) != ".png")
    throw UsageError(path + ": a frame pattern must end in .png (" + kSupported + ")");
  const Pattern p = parse_pattern(path);
  check_frames(path, frames);
  check_output_folder(expand_frame_pattern(path, 0));
  std::vector<fs::path> written;
  try {
    for (size_t i = 0; i < frames.size(); ++i) {
      const fs::path out = fs::path(p.dir) / expand(p, int(i));
      auto text = options.metadata;
      text["frame"] = std::to_string(i) + " of " + std::to_string(frames.size());
      write_png(out, frames[i], text);
      written.push_back(out);
    }
  } catch (...) {
    std::error_code ec;
    for (const auto& w : written) fs::remove(w, ec);
    throw;
  }
}

#if MMDIT_HAVE_FFMPEG

std::string av_error(int err) {
  char buf[AV_ERROR_MAX_STRING_SIZE] = {0};
  av_strerror(err, buf, sizeof buf);
  return buf;
}

// FFmpeg and x264 chatter (profile, stats) goes to the debug log, never straight to stderr: the CLI
// promises one line per error, and our RuntimeFailure carries that line.
void route_ffmpeg_log() {
  static std::once_flag once;
  std::call_once(once, [] {
    av_log_set_callback([](void* avcl, int level, const char* fmt, va_list vl) {
      if (level > AV_LOG_WARNING) return;
      char line[1024];
      int print_prefix = 1;
      av_log_format_line2(avcl, level, fmt, vl, line, sizeof line, &print_prefix);
      std::string s(line);
      while (!s.empty() && (s.back() == '\n' || s.back() == '\r')) s.pop_back();
      if (!s.empty()) log_debug("ffmpeg: " + s);
    });
  });
}

// Owns every FFmpeg object of one encode; frees them in any case (the temp file is removed by
// atomic_write when we throw).
struct Encoder {
  AVFormatContext* fmt = nullptr;
  AVCodecContext* enc = nullptr;
  SwsContext* sws = nullptr;
  AVFrame* frame = nullptr;
  AVPacket* pkt = nullptr;
  AVStream* stream = nullptr;
  std::string path;  // the user's path, for messages

  ~Encoder() {
    av_packet_free(&pkt);
    av_frame_free(&frame);
    sws_freeContext(sws);
    avcodec_free_context(&enc);
    if (fmt) {
      if (fmt->pb) avio_closep(&fmt->pb);
      avformat_free_context(fmt);
    }
  }

  void check(int err, const char* what) const {
    if (err < 0) throw RuntimeFailure(path + ": FFmpeg " + what + " failed: " + av_error(err));
  }

  // Sends one frame (or nullptr to flush) and writes every packet the encoder has ready.
  void encode(AVFrame* f) {
    check(avcodec_send_frame(enc, f), "encoding (send frame)");
    for (;;) {
      int r = avcodec_receive_packet(enc, pkt);
      if (r == AVERROR(EAGAIN) || r == AVERROR_EOF) return;
      check(r, "encoding (receive packet)");
      av_packet_rescale_ts(pkt, enc->time_base, stream->time_base);
      pkt->stream_index = stream->index;
      r = av_interleaved_write_frame(fmt, pkt);  // takes the packet's reference
      check(r, "writing a packet");
    }
  }
};

void encode_mp4(const fs::path& tmp, const std::string& path, const std::vector<Image>& frames,
                const VideoOptions& options) {
  route_ffmpeg_log();
  const Image& f0 = frames[0];
  Encoder e;
  e.path = path;
  // The muxer is named, so the temp file's name needs no .mp4 extension.
  e.check(avformat_alloc_output_context2(&e.fmt, nullptr, "mp4", tmp.c_str()), "opening the MP4 muxer");
  const AVCodec* codec = avcodec_find_encoder_by_name("libx264");
  if (!codec) throw RuntimeFailure(path + ": this FFmpeg has no libx264 encoder (install an FFmpeg built with x264)");
  e.stream = avformat_new_stream(e.fmt, nullptr);
  e.enc = avcodec_alloc_context3(codec);
  e.frame = av_frame_alloc();
  e.pkt = av_packet_alloc();
  if (!e.stream || !e.enc || !e.frame || !e.pkt) throw RuntimeFailure(path + ": FFmpeg out of memory");

  AVCodecContext* c = e.enc;
  c->width = f0.width;
  c->height = f0.height;
  c->pix_fmt = AV_PIX_FMT_YUV420P;
  c->time_base = AVRational{1, options.fps};
  c->framerate = AVRational{options.fps, 1};
  c->sample_aspect_ratio = AVRational{1, 1};
  c->color_range = AVCOL_RANGE_MPEG;
  c->colorspace = AVCOL_SPC_BT709;
  c->color_primaries = AVCOL_PRI_BT709;
  c->color_trc = AVCOL_TRC_BT709;
  c->chroma_sample_location = AVCHROMA_LOC_LEFT;
  if (e.fmt->oformat->flags & AVFMT_GLOBALHEADER) c->flags |= AV_CODEC_FLAG_GLOBAL_HEADER;
  AVDictionary* codec_opts = nullptr;
  av_dict_set(&codec_opts, "preset", "medium", 0);
  av_dict_set(&codec_opts, "crf", std::to_string(options.crf).c_str(), 0);
  int r = avcodec_open2(c, codec, &codec_opts);
  av_dict_free(&codec_opts);
  e.check(r, "opening libx264");
  e.check(avcodec_parameters_from_context(e.stream->codecpar, c), "copying the codec parameters");
  e.stream->time_base = c->time_base;
  e.stream->avg_frame_rate = c->framerate;
  e.stream->r_frame_rate = c->framerate;

  for (const auto& [k, v] : options.metadata) av_dict_set(&e.fmt->metadata, k.c_str(), v.c_str(), 0);

  e.check(avio_open(&e.fmt->pb, tmp.c_str(), AVIO_FLAG_WRITE), "creating the output file");
  AVDictionary* mux_opts = nullptr;
  av_dict_set(&mux_opts, "movflags", "+faststart", 0);
  r = avformat_write_header(e.fmt, &mux_opts);
  av_dict_free(&mux_opts);
  e.check(r, "writing the MP4 header");

  // RGB (full range, as the model decodes it) -> YUV 4:2:0 BT.709 limited range, matching the tags.
  const AVPixelFormat src_fmt =
      f0.channels == 1 ? AV_PIX_FMT_GRAY8 : f0.channels == 4 ? AV_PIX_FMT_RGBA : AV_PIX_FMT_RGB24;
  e.sws = sws_getContext(f0.width, f0.height, src_fmt, f0.width, f0.height, AV_PIX_FMT_YUV420P,
                         SWS_BICUBIC | SWS_ACCURATE_RND | SWS_FULL_CHR_H_INP, nullptr, nullptr, nullptr);
  if (!e.sws) throw RuntimeFailure(path + ": FFmpeg cannot convert " + std::to_string(f0.channels) + "-channel frames to yuv420p");
  // Returns -1 (not an AVERROR) when the conversion cannot take these details.
  if (sws_setColorspaceDetails(e.sws, sws_getCoefficients(SWS_CS_ITU709), 1, sws_getCoefficients(SWS_CS_ITU709), 0, 0,
                               1 << 16, 1 << 16) < 0)
    throw RuntimeFailure(path + ": FFmpeg cannot set the BT.709 limited-range colour conversion");

  e.frame->format = c->pix_fmt;
  e.frame->width = c->width;
  e.frame->height = c->height;
  e.frame->color_range = c->color_range;
  e.frame->colorspace = c->colorspace;
  e.frame->color_primaries = c->color_primaries;
  e.frame->color_trc = c->color_trc;
  e.check(av_frame_get_buffer(e.frame, 0), "allocating a frame");
  for (size_t i = 0; i < frames.size(); ++i) {
    // The encoder may still hold the previous buffer: get a writable one.
    e.check(av_frame_make_writable(e.frame), "allocating a frame");
    const uint8_t* src[1] = {frames[i].pixels.data()};
    const int src_stride[1] = {f0.width * f0.channels};
    sws_scale(e.sws, src, src_stride, 0, f0.height, e.frame->data, e.frame->linesize);
    e.frame->pts = int64_t(i);
    e.encode(e.frame);
  }
  e.encode(nullptr);
  e.check(av_write_trailer(e.fmt), "finishing the MP4 (faststart)");
  e.check(avio_closep(&e.fmt->pb), "closing the output file");

  // Flush to disk before the rename, like write_png does, so a crash never leaves a renamed but empty file.
  int fd = ::open(tmp.c_str(), O_RDONLY);
  if (fd < 0 || ::fsync(fd) != 0) {
    int err = errno;
    if (fd >= 0) ::close(fd);
    throw FileError(path + ": cannot sync (" + std::strerror(err) + ")");
  }
  ::close(fd);
}

#endif  // MMDIT_HAVE_FFMPEG

void write_mp4(const fs::path& path, const std::vector<Image>& frames, const VideoOptions& options) {
  const std::string p = path.string();
#if !MMDIT_HAVE_FFMPEG
  (void)p;
  (void)frames;
  (void)options;
  throw UsageError("this mmdit was built without FFmpeg: MP4 output unavailable; write frames with --output 'frame_%03d.png'");
#else
  if (options.fps < 1 || options.fps > 240) throw UsageError(p + ": fps must be 1..240, not " + std::to_string(options.fps));
  if (options.crf < 0 || options.crf > 51) throw UsageError(p + ": crf must be 0..51, not " + std::to_string(options.crf));
  for (const auto& [k, v] : options.metadata) {
    if (std::find(kVideoMetadataKeys.begin(), kVideoMetadataKeys.end(), k) == kVideoMetadataKeys.end()) {
      std::string keys;
      for (const auto& s : kVideoMetadataKeys) keys += (keys.empty() ? "" : ", ") + s;
      throw UsageError(p + ": video metadata key '" + k + "' is not an MP4 tag (use one of " + keys + ")");
    }
  }
  const Image& f0 = check_frames(p, frames);
  if (f0.width % 2 || f0.height % 2)
    throw ShapeError(p + ": MP4 (yuv420p) needs an even width and height, not " + std::to_string(f0.width) + "x" +
                     std::to_string(f0.height));
  atomic_write(path, [&](const fs::path& tmp) { encode_mp4(tmp, p, frames, options); });
#endif
}

}  // namespace

bool video_mp4_available() { return MMDIT_HAVE_FFMPEG != 0; }

bool is_frame_pattern(const std::string& path) {
  const std::string name = fs::path(path).filename().string();
  for (size_t i = 0; i < name.size(); ++i) {
    if (name[i] != '%') continue;
    if (i + 1 < name.size() && name[i + 1] == '%') {
      ++i;
      continue;
    }
    return true;
  }
  return false;
}

fs::path expand_frame_pattern(const std::string& pattern, int index) {
  if (index < 0) throw UsageError(pattern + ": frame index " + std::to_string(index) + " is negative");
  const Pattern p = parse_pattern(pattern);
  return fs::path(p.dir) / expand(p, index);
}

void write_video(const fs::path& path, const std::vector<Image>& frames, const VideoOptions& options) {
  const std::string p = path.string();
  if (is_frame_pattern(p)) return write_png_sequence(p, frames, options);
  if (lower(path.extension().string()) == ".mp4") return write_mp4(path, frames, options);
  const std::string ext = path.extension().string();
  throw UsageError(p + ": " + (ext.empty() ? std::string("no file extension") : "'" + ext + "' is not a video output") +
                   "; " + kSupported);
}

}  // namespace mmdit
