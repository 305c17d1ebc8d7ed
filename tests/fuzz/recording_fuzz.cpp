// Recordings (`hvtrace trace -r FILE`) are untrusted input: arbitrary bytes through the reader and
// a replay into the Tracer. No crash, no out-of-bounds read, no allocation beyond the frame limit;
// a bad file ends in an error.
#include "trace/recording.hpp"
#include "trace/tracer.hpp"

#include <sstream>

using namespace hvtrace;

extern "C" int LLVMFuzzerTestOneInput(const std::uint8_t* data, std::size_t size) {
  // Most inputs get the magic, so the fuzzer spends its time on the frames.
  std::string bytes(reinterpret_cast<const char*>(data), size);
  if (size > 0 && (data[0] & 1) != 0) {
    std::string head(trace::kRecordingMagic, sizeof trace::kRecordingMagic);
    const std::uint32_t fixed[2] = {trace::kRecordingFormatVersion, abi::kAbiVersion};
    head.append(reinterpret_cast<const char*>(fixed), sizeof fixed);
    head.append(16, '\0');   // creation time, realtime offset
    head.append(16, '\0');   // four empty strings
    bytes = head + bytes.substr(1);
  }
  auto reader = trace::RecordingReader::from_stream(std::make_unique<std::istringstream>(bytes), "fuzz.rec");
  if (!reader) return 0;
  trace::Replayer rp(*reader);
  (void)rp.start();
  trace::NullSink sink;
  trace::TraceConfig cfg;
  cfg.follow = true;
  std::size_t lines = 0;
  trace::Tracer t(rp.guest(), sink, cfg, [&](const std::string&) { ++lines; });
  (void)trace::apply_targets(t, rp.targets().value_or(trace::RecordedTargets{}));
  if (!rp.targets()) t.trace_all();
  (void)t.apply();
  (void)rp.run(t);
  const auto c = rp.counters().value_or(trace::RecordedCounters{});
  t.finish(c.rings, c.before, c.after);
  return 0;
}
