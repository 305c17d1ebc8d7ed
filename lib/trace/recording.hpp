// Recordings of `hvtrace trace` (-w FILE / -r FILE), as tcpdump and sysdig have them: the monitor's
// event stream together with every answer the guest gave the Tracer, so a later replay runs the
// whole decoding stack (events::decode_record, the Tracer, lib/syscalls) with no VM and sees exactly
// what the live run saw.
//
// File format (version 2, little-endian, x86-64 hosts; version 1 lacked RingStats.sync_wait_ns):
//   header   "HVTRACE-REC\0" (12 bytes), u32 format version, u32 hvtrace ABI version (abi/events.h),
//            i64 creation time (Unix seconds), i64 host CLOCK_REALTIME - CLOCK_MONOTONIC (ns),
//            then four strings (u32 length + bytes): kernel banner, kernel build id, command line,
//            reserved (empty).
//   frames   u32 type, u32 payload length (<= kMaxFramePayload), payload:
//     kEvent       u32 vCPU, then one ring record as the monitor lays it out (abi/events.h; the
//                  record's own size field equals the rest of the payload). Written from the decoded
//                  Event (every field decode_record reads, captures included); decoded on replay by
//                  events::decode_record, which validates it as it validates the live rings.
//     kPidAnswer   u32 pid, u8 status (0 error + string, 1 no such process, 2 found + ProcInfo)
//     kNameAnswer  string comm, u8 status (0 error + string, 2 u32 count + count x ProcInfo)
//     kTaskAnswer  u64 task address, u8 found, [u8 has_dtb, u64 dtb, string comm]
//     kExecAnswer  u32 vCPU, u64 bprm, u8 found, [u32 tgid, u64 task, u64 task dtb, u64 new dtb]
//     kGuestNames  u32 count, count x (u32 nr, string name)
//     kTargets     u32 n pids, pids, u32 n comms, strings, u8 has start_at_exec, u32 pid, u8 all,
//                  u8 follow, u32 method
//     kCounters    the monitor's counters for -c (last frame): u32 n rings x RingStats (published, lost
//                  records, lost pending, u32 n drops + drops, sync waits, timeouts, degraded, cb calls,
//                  cb ns, sync wait ns), 2 x MonitorStats
//   ProcInfo: u32 tgid, u8 has_dtb, u64 dtb, string comm.
// Answers follow the event whose handling asked for them; a replay reads them before it hands that
// event to the Tracer and answers every question with the latest recorded answer for its key.
#pragma once

#include "common/result.hpp"
#include "events/control_client.hpp"
#include "events/event_reader.hpp"
#include "trace/tracer.hpp"

#include <cstdint>
#include <cstdio>
#include <filesystem>
#include <istream>
#include <map>
#include <memory>
#include <optional>
#include <string>
#include <vector>

namespace hvtrace::trace {

inline constexpr char kRecordingMagic[12] = "HVTRACE-REC";
inline constexpr std::uint32_t kRecordingFormatVersion = 5;   // 2: ring counters carry sync_wait_ns; 3: and open_evicted; 4: and entries_missed; 5: exec answers
inline constexpr std::uint32_t kMaxFramePayload = 1U << 20;   // a ring record is at most ~270 KiB
inline constexpr std::uint32_t kMaxRecordedString = 64 * 1024;
inline constexpr std::uint32_t kMaxRecordedList = 1U << 16;

struct RecordingHeader {
  std::uint32_t format_version = kRecordingFormatVersion;
  std::uint32_t abi_version = 0;
  std::int64_t created_unix_s = 0;
  std::int64_t realtime_offset_ns = 0;
  std::string kernel_banner, kernel_build_id, command_line;
};

// The Tracer's targets in the live run (replay uses them unless -p/--comm are given).
struct RecordedTargets {
  std::vector<std::uint32_t> pids;
  std::vector<std::string> comms;
  std::optional<std::uint32_t> start_at_exec;
  bool all = false, follow = false;
  std::uint32_t method = 5;
};

struct RecordedCounters {
  std::vector<events::RingStats> rings;
  events::MonitorStats before, after;
};

enum class FrameType : std::uint32_t {
  kEvent = 1,
  kPidAnswer = 2,
  kNameAnswer = 3,
  kTaskAnswer = 4,
  kGuestNames = 5,
  kTargets = 6,
  kCounters = 7,
  kExecAnswer = 8,
};

struct Frame {
  FrameType type = FrameType::kEvent;
  std::uint64_t offset = 0;   // of the frame in the file
  events::Event event;
  std::uint32_t key32 = 0;                        // kPidAnswer: pid
  std::uint64_t key64 = 0;                        // kTaskAnswer: task address
  std::string key_str;                            // kNameAnswer: comm
  std::optional<std::string> error;               // kPidAnswer / kNameAnswer: the lookup failed
  std::vector<ProcInfo> procs;                    // kPidAnswer (0 or 1) / kNameAnswer
  std::optional<TaskInfo> task;                   // kTaskAnswer
  std::optional<ExecInfo> exec;                   // kExecAnswer (key32: vCPU, key64: bprm)
  std::map<std::uint32_t, std::string> names;     // kGuestNames
  RecordedTargets targets;                        // kTargets
  RecordedCounters counters;                      // kCounters
};

// Encodes one decoded event as the ring record the monitor wrote (the inverse of decode_record).
[[nodiscard]] std::vector<std::uint8_t> encode_record(const events::Event& e);

class RecordingWriter {
 public:
  [[nodiscard]] static Result<std::unique_ptr<RecordingWriter>> create(const std::filesystem::path& path,
                                                                       const RecordingHeader& h);
  ~RecordingWriter();
  RecordingWriter(const RecordingWriter&) = delete;
  RecordingWriter& operator=(const RecordingWriter&) = delete;

  void event(const events::Event& e);
  void pid_answer(std::uint32_t pid, const Result<std::optional<ProcInfo>>& a);
  void name_answer(const std::string& comm, const Result<std::vector<ProcInfo>>& a);
  void task_answer(std::uint64_t task, const std::optional<TaskInfo>& a);
  void exec_answer(unsigned cpu, std::uint64_t bprm, const std::optional<ExecInfo>& a);
  void guest_names(const std::map<std::uint32_t, std::string>& names);
  void targets(const RecordedTargets& t);
  void counters(const RecordedCounters& c);
  // The first write error (sticky), then nothing more is written.
  [[nodiscard]] const std::optional<std::string>& failed() const { return error_; }
  Result<void> close();

 private:
  RecordingWriter() = default;
  void frame(FrameType t, const std::string& payload);

  std::FILE* f_ = nullptr;
  std::filesystem::path path_;
  std::optional<std::string> error_;
};

// Reads a recording from any stream (a file, or bytes in memory for tests and fuzzing). Every size
// is checked before anything is allocated or read; an error names the byte offset of the bad frame.
class RecordingReader {
 public:
  [[nodiscard]] static Result<RecordingReader> open(const std::filesystem::path& path);
  [[nodiscard]] static Result<RecordingReader> from_stream(std::unique_ptr<std::istream> in, std::string name);

  [[nodiscard]] const RecordingHeader& header() const { return header_; }
  // The next frame; nullopt at a clean end of file.
  [[nodiscard]] Result<std::optional<Frame>> next();
  [[nodiscard]] std::uint64_t offset() const { return offset_; }

 private:
  std::unique_ptr<std::istream> in_;
  std::string name_;
  RecordingHeader header_;
  std::uint64_t offset_ = 0;
};

// GuestQueries that writes every answer of `inner` to the recording.
class RecordingGuest final : public GuestQueries {
 public:
  RecordingGuest(GuestQueries& inner, RecordingWriter& w) : inner_(&inner), w_(&w) {}
  Result<std::optional<ProcInfo>> pid(std::uint32_t pid) override;
  Result<std::vector<ProcInfo>> name(const std::string& comm) override;
  std::optional<TaskInfo> task(std::uint64_t task_addr) override;
  std::optional<ExecInfo> exec(unsigned cpu, std::uint64_t bprm) override;
  bool can_follow_exec() override { return inner_->can_follow_exec(); }
  IdentityOffsets identity() override { return inner_->identity(); }
  // Not recorded: only breakpoints (the fork and exec ones) are placed by symbol, and a replay
  // places none; their hits are in the event stream.
  std::optional<std::uint64_t> symbol(const std::string& name) override { return inner_->symbol(name); }

 private:
  GuestQueries* inner_;
  RecordingWriter* w_;
};

// GuestQueries answered from a recording: the latest recorded answer for the question's key. A
// question the live run never asked (replay options wider than the live ones) is answered from
// what the events show (index()), or not at all: a replay cannot see what was not recorded.
class ReplayGuest final : public GuestQueries {
 public:
  Result<std::optional<ProcInfo>> pid(std::uint32_t pid) override;
  Result<std::vector<ProcInfo>> name(const std::string& comm) override;
  std::optional<TaskInfo> task(std::uint64_t task_addr) override;
  std::optional<ExecInfo> exec(unsigned cpu, std::uint64_t bprm) override;
  IdentityOffsets identity() override { return {}; }

  void learn(const Frame& f);
  // A pass over a whole recording: which processes its events show (for -p/--comm on replay).
  Result<void> index(RecordingReader& r);

 private:
  std::map<std::uint32_t, Frame> pids_;
  std::map<std::string, Frame> names_;
  std::map<std::uint64_t, std::optional<TaskInfo>> tasks_;
  std::map<std::pair<unsigned, std::uint64_t>, std::optional<ExecInfo>> execs_;
  struct Seen {
    std::uint64_t dtb = 0;
    std::string comm;
  };
  std::map<std::uint32_t, Seen> seen_;   // tgid -> first DTB its events show, comm if recorded
};

// The recorded targets on a Tracer (trace_pid / trace_comm / start_at_exec / trace_all).
Result<void> apply_targets(Tracer& t, const RecordedTargets& targets);

// Drives a replay: start() reads up to the first event (answers to the setup's questions, the guest
// names, the targets); run() feeds every event to the Tracer, each after the answers its handling
// needs. A corrupt or truncated file: everything valid before it is handled, then the error.
class Replayer {
 public:
  explicit Replayer(RecordingReader& r) : r_(&r) {}
  Result<void> start();
  Result<void> run(Tracer& t);
  [[nodiscard]] ReplayGuest& guest() { return guest_; }
  [[nodiscard]] const std::optional<RecordedTargets>& targets() const { return targets_; }
  [[nodiscard]] const std::map<std::uint32_t, std::string>& guest_names() const { return names_; }
  [[nodiscard]] const std::optional<RecordedCounters>& counters() const { return counters_; }

 private:
  void take(Frame& f);

  RecordingReader* r_;
  ReplayGuest guest_;
  std::optional<RecordedTargets> targets_;
  std::map<std::uint32_t, std::string> names_;
  std::optional<RecordedCounters> counters_;
  std::optional<Frame> first_event_;
  std::optional<Error> start_error_;
};

}  // namespace hvtrace::trace
