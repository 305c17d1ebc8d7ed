#include "trace/recording.hpp"

#include <fmt/format.h>

#include <cerrno>
#include <cstring>
#include <fstream>

namespace hvtrace::trace {
namespace {

// ---- payload encoding -----------------------------------------------------------------------

class Out {
 public:
  template <typename T>
  void put(T v) {
    const auto* p = reinterpret_cast<const char*>(&v);
    s_.append(p, sizeof v);
  }
  void str(std::string_view v) {
    const auto n = static_cast<std::uint32_t>(std::min<std::size_t>(v.size(), kMaxRecordedString));
    put(n);
    s_.append(v.data(), n);
  }
  void bytes(const void* p, std::size_t n) { s_.append(static_cast<const char*>(p), n); }
  void proc(const ProcInfo& p) {
    put(p.tgid);
    put<std::uint8_t>(p.dtb ? 1 : 0);
    put<std::uint64_t>(p.dtb.value_or(0));
    str(p.comm);
  }
  std::string& data() { return s_; }

 private:
  std::string s_;
};

// Bounds-checked reads over one payload; any overrun makes ok() false and reads return zeros.
class In {
 public:
  In(const std::string& s) : p_(s.data()), left_(s.size()) {}
  template <typename T>
  T get() {
    T v{};
    if (left_ < sizeof v) {
      ok_ = false;
      left_ = 0;
      return v;
    }
    std::memcpy(&v, p_, sizeof v);
    p_ += sizeof v;
    left_ -= sizeof v;
    return v;
  }
  std::string str() {
    const auto n = get<std::uint32_t>();
    if (!ok_ || n > kMaxRecordedString || n > left_) {
      ok_ = false;
      left_ = 0;
      return {};
    }
    std::string s(p_, n);
    p_ += n;
    left_ -= n;
    return s;
  }
  std::uint32_t count() {
    const auto n = get<std::uint32_t>();
    if (n > kMaxRecordedList || n > left_) {   // every element takes at least one byte
      ok_ = false;
      left_ = 0;
      return 0;
    }
    return n;
  }
  ProcInfo proc() {
    ProcInfo p;
    p.tgid = get<std::uint32_t>();
    const bool has = get<std::uint8_t>() != 0;
    const auto dtb = get<std::uint64_t>();
    if (has) p.dtb = dtb;
    p.comm = str();
    return p;
  }
  [[nodiscard]] bool ok() const { return ok_; }
  [[nodiscard]] std::size_t left() const { return left_; }
  [[nodiscard]] const char* here() const { return p_; }

 private:
  const char* p_;
  std::size_t left_;
  bool ok_ = true;
};

void put_ring_stats(Out& o, const events::RingStats& s) {
  o.put(s.published);
  o.put(s.lost_records);
  o.put(s.lost_pending);
  o.put(static_cast<std::uint32_t>(std::size(s.drops)));
  for (auto d : s.drops) o.put(d);
  o.put(s.sync_waits);
  o.put(s.sync_timeouts);
  o.put(s.sync_degraded);
  o.put(s.cb_calls);
  o.put(s.cb_ns);
  o.put(s.sync_wait_ns);
  o.put(s.open_evicted);
  o.put(s.entries_missed);
}

events::RingStats get_ring_stats(In& in) {
  events::RingStats s;
  s.published = in.get<std::uint64_t>();
  s.lost_records = in.get<std::uint64_t>();
  s.lost_pending = in.get<std::uint64_t>();
  const auto n = in.count();
  for (std::uint32_t i = 0; i < n; ++i) {
    const auto d = in.get<std::uint64_t>();
    if (i < std::size(s.drops)) s.drops[i] = d;   // causes a newer hvtrace added are not shown
  }
  s.sync_waits = in.get<std::uint64_t>();
  s.sync_timeouts = in.get<std::uint64_t>();
  s.sync_degraded = in.get<std::uint64_t>();
  s.cb_calls = in.get<std::uint64_t>();
  s.cb_ns = in.get<std::uint64_t>();
  s.sync_wait_ns = in.get<std::uint64_t>();
  s.open_evicted = in.get<std::uint64_t>();
  s.entries_missed = in.get<std::uint64_t>();
  return s;
}

void put_monitor_stats(Out& o, const events::MonitorStats& s) {
  o.put(s.generation);
  o.put(s.rejected_messages);
  o.put(s.user_syscalls);
  o.put(s.cr3_writes);
  o.put(s.user_int80s);
  o.put(s.user_sysenters);
}

events::MonitorStats get_monitor_stats(In& in) {
  events::MonitorStats s;
  s.generation = in.get<std::uint32_t>();
  s.rejected_messages = in.get<std::uint64_t>();
  s.user_syscalls = in.get<std::uint64_t>();
  s.cr3_writes = in.get<std::uint64_t>();
  s.user_int80s = in.get<std::uint64_t>();
  s.user_sysenters = in.get<std::uint64_t>();
  return s;
}

template <typename T>
std::vector<std::uint8_t> with_captures(const T& body, const events::Event& e) {
  std::size_t size = sizeof body;
  const std::size_t n = std::min<std::size_t>(e.captures.size(), abi::kMaxCaptures);
  for (std::size_t i = 0; i < n; ++i) size += sizeof(abi::Capture) + abi::align_record(e.captures[i].data.size());
  std::vector<std::uint8_t> b(abi::align_record(size), 0);
  std::size_t at = sizeof body;
  for (std::size_t i = 0; i < n; ++i) {
    const auto& c = e.captures[i];
    abi::Capture h{static_cast<std::uint8_t>(c.arg), static_cast<std::uint8_t>(c.kind), c.flags,
                   static_cast<std::uint32_t>(c.data.size()), c.true_len};
    std::memcpy(b.data() + at, &h, sizeof h);
    at += sizeof h;
    std::memcpy(b.data() + at, c.data.data(), c.data.size());
    at += abi::align_record(c.data.size());
  }
  return b;
}

template <typename T>
std::vector<std::uint8_t> plain(T body) {
  std::vector<std::uint8_t> b(abi::align_record(sizeof body), 0);
  std::memcpy(b.data(), &body, sizeof body);
  return b;
}

Error at(std::uint64_t off, const std::string& what) { return make_error("corrupt at byte {}: {}", off, what); }

}  // namespace

std::vector<std::uint8_t> encode_record(const events::Event& e) {
  // The Event's own common fields are what the Tracer reads: they go into the record's header.
  const auto common = [&](abi::EventHeader& h) {
    h.rec.type = static_cast<std::uint16_t>(e.type);
    h.rec.flags = e.flags;
    h.seq = e.seq;
    h.time_ns = e.time_ns;
    h.insns = e.insns;
    h.vcpu = e.ring;
    h.generation = e.generation;
  };
  // A body alone, or a syscall body followed by its capture blocks.
  const auto event = [&](auto body) {
    common(body.hdr);
    return plain(body);
  };
  const auto call = [&](auto body) {
    common(body.hdr);
    body.n_captures = static_cast<decltype(body.n_captures)>(std::min<std::size_t>(e.captures.size(), abi::kMaxCaptures));
    auto b = with_captures(body, e);
    std::memcpy(b.data(), &body, sizeof body);
    return b;
  };
  std::vector<std::uint8_t> b;
  switch (e.type) {
    case abi::RecordType::kLost: b = plain(e.lost); break;
    case abi::RecordType::kCr3Write: b = event(e.cr3); break;
    case abi::RecordType::kBreakpoint: b = event(e.bp); break;
    case abi::RecordType::kSyscallEntry: b = call(e.entry); break;
    case abi::RecordType::kSyscallExit: b = call(e.exit); break;
    default: return {};
  }
  const abi::RecordHeader h{static_cast<std::uint16_t>(e.type), e.flags, static_cast<std::uint32_t>(b.size())};
  std::memcpy(b.data(), &h, sizeof h);
  return b;
}

// ---- writer ---------------------------------------------------------------------------------

Result<std::unique_ptr<RecordingWriter>> RecordingWriter::create(const std::filesystem::path& path, const RecordingHeader& h) {
  std::unique_ptr<RecordingWriter> w(new RecordingWriter());
  w->path_ = path;
  w->f_ = std::fopen(path.c_str(), "wb");
  if (w->f_ == nullptr) return make_error("-w {}: {}", path.string(), std::strerror(errno));
  Out o;
  o.bytes(kRecordingMagic, sizeof kRecordingMagic);
  o.put(h.format_version);
  o.put(h.abi_version);
  o.put(h.created_unix_s);
  o.put(h.realtime_offset_ns);
  o.str(h.kernel_banner);
  o.str(h.kernel_build_id);
  o.str(h.command_line);
  o.str("");
  if (std::fwrite(o.data().data(), 1, o.data().size(), w->f_) != o.data().size())
    return make_error("-w {}: {}", path.string(), std::strerror(errno));
  return w;
}

RecordingWriter::~RecordingWriter() {
  if (f_ != nullptr) std::fclose(f_);
}

void RecordingWriter::frame(FrameType t, const std::string& payload) {
  if (error_ || f_ == nullptr) return;
  if (payload.size() > kMaxFramePayload) {
    error_ = fmt::format("-w {}: a frame of {} bytes (at most {})", path_.string(), payload.size(), kMaxFramePayload);
    return;
  }
  const std::uint32_t hdr[2] = {static_cast<std::uint32_t>(t), static_cast<std::uint32_t>(payload.size())};
  if (std::fwrite(hdr, 1, sizeof hdr, f_) != sizeof hdr || std::fwrite(payload.data(), 1, payload.size(), f_) != payload.size())
    error_ = fmt::format("-w {}: {}", path_.string(), std::strerror(errno));
}

void RecordingWriter::event(const events::Event& e) {
  auto rec = encode_record(e);
  if (rec.empty()) return;
  Out o;
  o.put(static_cast<std::uint32_t>(e.ring));
  o.bytes(rec.data(), rec.size());
  frame(FrameType::kEvent, o.data());
}

void RecordingWriter::pid_answer(std::uint32_t pid, const Result<std::optional<ProcInfo>>& a) {
  Out o;
  o.put(pid);
  if (!a) {
    o.put<std::uint8_t>(0);
    o.str(a.error().message);
  } else if (!*a) {
    o.put<std::uint8_t>(1);
  } else {
    o.put<std::uint8_t>(2);
    o.proc(**a);
  }
  frame(FrameType::kPidAnswer, o.data());
}

void RecordingWriter::name_answer(const std::string& comm, const Result<std::vector<ProcInfo>>& a) {
  Out o;
  o.str(comm);
  if (!a) {
    o.put<std::uint8_t>(0);
    o.str(a.error().message);
  } else {
    o.put<std::uint8_t>(2);
    const auto n = std::min<std::size_t>(a->size(), kMaxRecordedList);
    o.put(static_cast<std::uint32_t>(n));
    for (std::size_t i = 0; i < n; ++i) o.proc((*a)[i]);
  }
  frame(FrameType::kNameAnswer, o.data());
}

void RecordingWriter::task_answer(std::uint64_t task, const std::optional<TaskInfo>& a) {
  Out o;
  o.put(task);
  o.put<std::uint8_t>(a ? 1 : 0);
  if (a) {
    o.put<std::uint8_t>(a->dtb ? 1 : 0);
    o.put<std::uint64_t>(a->dtb.value_or(0));
    o.str(a->comm);
    o.put<std::uint32_t>(a->tgid);
    o.put<std::uint32_t>(a->ppid);
  }
  frame(FrameType::kTaskAnswer, o.data());
}

void RecordingWriter::exec_answer(unsigned cpu, std::uint64_t bprm, const std::optional<ExecInfo>& a) {
  Out o;
  o.put(static_cast<std::uint32_t>(cpu));
  o.put(bprm);
  o.put<std::uint8_t>(a ? 1 : 0);
  if (a) {
    o.put<std::uint32_t>(a->tgid);
    o.put<std::uint64_t>(a->task);
    o.put<std::uint64_t>(a->task_dtb);
    o.put<std::uint64_t>(a->new_dtb);
  }
  frame(FrameType::kExecAnswer, o.data());
}

void RecordingWriter::guest_names(const std::map<std::uint32_t, std::string>& names) {
  Out o;
  const auto n = std::min<std::size_t>(names.size(), kMaxRecordedList);
  o.put(static_cast<std::uint32_t>(n));
  std::size_t i = 0;
  for (const auto& [nr, name] : names) {
    if (i++ == n) break;
    o.put(nr);
    o.str(name);
  }
  frame(FrameType::kGuestNames, o.data());
}

void RecordingWriter::targets(const RecordedTargets& t) {
  Out o;
  o.put(static_cast<std::uint32_t>(std::min<std::size_t>(t.pids.size(), kMaxRecordedList)));
  for (std::size_t i = 0; i < t.pids.size() && i < kMaxRecordedList; ++i) o.put(t.pids[i]);
  o.put(static_cast<std::uint32_t>(std::min<std::size_t>(t.comms.size(), kMaxRecordedList)));
  for (std::size_t i = 0; i < t.comms.size() && i < kMaxRecordedList; ++i) o.str(t.comms[i]);
  o.put<std::uint8_t>(t.start_at_exec ? 1 : 0);
  o.put<std::uint32_t>(t.start_at_exec.value_or(0));
  o.put<std::uint8_t>(t.all ? 1 : 0);
  o.put<std::uint8_t>(t.follow ? 1 : 0);
  o.put(t.method);
  frame(FrameType::kTargets, o.data());
}

void RecordingWriter::counters(const RecordedCounters& c) {
  Out o;
  o.put(static_cast<std::uint32_t>(std::min<std::size_t>(c.rings.size(), kMaxRecordedList)));
  for (std::size_t i = 0; i < c.rings.size() && i < kMaxRecordedList; ++i) put_ring_stats(o, c.rings[i]);
  put_monitor_stats(o, c.before);
  put_monitor_stats(o, c.after);
  frame(FrameType::kCounters, o.data());
}

Result<void> RecordingWriter::close() {
  if (f_ != nullptr) {
    const bool bad = std::fflush(f_) != 0 || std::ferror(f_) != 0;
    const int err = errno;
    if (std::fclose(f_) != 0 && !error_) error_ = fmt::format("-w {}: {}", path_.string(), std::strerror(errno));
    f_ = nullptr;
    if (bad && !error_) error_ = fmt::format("-w {}: {}", path_.string(), std::strerror(err));
  }
  if (error_) return make_error("{}", *error_);
  return {};
}

// ---- reader ---------------------------------------------------------------------------------

Result<RecordingReader> RecordingReader::open(const std::filesystem::path& path) {
  auto in = std::make_unique<std::ifstream>(path, std::ios::binary);
  if (!*in) return make_error("-r {}: {}", path.string(), std::strerror(errno));
  return from_stream(std::move(in), path.string());
}

Result<RecordingReader> RecordingReader::from_stream(std::unique_ptr<std::istream> in, std::string name) {
  RecordingReader r;
  r.in_ = std::move(in);
  r.name_ = std::move(name);
  auto& s = *r.in_;
  char magic[sizeof kRecordingMagic] = {};
  s.read(magic, sizeof magic);
  if (s.gcount() != static_cast<std::streamsize>(sizeof magic) || std::memcmp(magic, kRecordingMagic, sizeof magic) != 0)
    return make_error("{} is not an hvtrace recording (no HVTRACE-REC header)", r.name_);
  // The fixed part, then four bounded strings.
  auto get = [&](auto& v) {
    s.read(reinterpret_cast<char*>(&v), sizeof v);
    return s.gcount() == static_cast<std::streamsize>(sizeof v);
  };
  std::uint64_t off = sizeof magic;
  auto& h = r.header_;
  if (!get(h.format_version) || !get(h.abi_version) || !get(h.created_unix_s) || !get(h.realtime_offset_ns))
    return make_error("{}: truncated header", r.name_);
  if (h.format_version != kRecordingFormatVersion)
    return make_error("{}: recording format version {}; this hvtrace reads version {}", r.name_, h.format_version,
                      kRecordingFormatVersion);
  if (h.abi_version != abi::kAbiVersion)
    return make_error("{}: recorded with hvtrace ABI {}; this hvtrace decodes ABI {}", r.name_, h.abi_version, abi::kAbiVersion);
  off += 24;
  std::string* strs[] = {&h.kernel_banner, &h.kernel_build_id, &h.command_line, nullptr};
  for (auto* dst : strs) {
    std::uint32_t n = 0;
    if (!get(n)) return make_error("{}: truncated header", r.name_);
    if (n > kMaxRecordedString) return make_error("{}: {}", r.name_, at(off, fmt::format("header string of {} bytes", n)).message);
    std::string v(n, '\0');
    s.read(v.data(), n);
    if (s.gcount() != static_cast<std::streamsize>(n)) return make_error("{}: truncated header", r.name_);
    if (dst != nullptr) *dst = std::move(v);
    off += 4 + n;
  }
  r.offset_ = off;
  return r;
}

Result<std::optional<Frame>> RecordingReader::next() {
  auto& s = *in_;
  const std::uint64_t start = offset_;
  std::uint32_t hdr[2] = {};
  s.read(reinterpret_cast<char*>(hdr), sizeof hdr);
  if (s.gcount() == 0) return std::optional<Frame>();
  auto fail = [&](const std::string& what) -> Error { return make_error("{}: {}", name_, at(start, what).message); };
  if (s.gcount() != static_cast<std::streamsize>(sizeof hdr)) return fail("truncated frame header");
  if (hdr[1] > kMaxFramePayload) return fail(fmt::format("frame of {} bytes (at most {})", hdr[1], kMaxFramePayload));
  std::string payload(hdr[1], '\0');
  s.read(payload.data(), hdr[1]);
  if (s.gcount() != static_cast<std::streamsize>(hdr[1]))
    return fail(fmt::format("truncated frame ({} of {} bytes)", s.gcount(), hdr[1]));
  offset_ += sizeof hdr + hdr[1];
  Frame f;
  f.offset = start;
  f.type = static_cast<FrameType>(hdr[0]);
  In in(payload);
  switch (f.type) {
    case FrameType::kEvent: {
      const auto vcpu = in.get<std::uint32_t>();
      if (!in.ok() || vcpu >= abi::kMaxVcpus) return fail(fmt::format("event of vCPU {}", vcpu));
      const auto* rec = reinterpret_cast<const std::uint8_t*>(in.here());
      abi::RecordHeader rh{};
      if (in.left() < sizeof rh) return fail("event shorter than a record header");
      std::memcpy(&rh, rec, sizeof rh);
      if (rh.size != in.left()) return fail(fmt::format("record says {} bytes, frame holds {}", rh.size, in.left()));
      auto e = events::decode_record(rec, in.left());
      if (!e) return fail(e.error().message);
      f.event = std::move(*e);
      f.event.ring = vcpu;
      return std::optional<Frame>(std::move(f));
    }
    case FrameType::kPidAnswer: {
      f.key32 = in.get<std::uint32_t>();
      const auto st = in.get<std::uint8_t>();
      if (st == 0) f.error = in.str();
      else if (st == 2) f.procs.push_back(in.proc());
      else if (st != 1) return fail(fmt::format("pid answer status {}", st));
      break;
    }
    case FrameType::kNameAnswer: {
      f.key_str = in.str();
      const auto st = in.get<std::uint8_t>();
      if (st == 0) {
        f.error = in.str();
      } else if (st == 2) {
        const auto n = in.count();
        for (std::uint32_t i = 0; i < n && in.ok(); ++i) f.procs.push_back(in.proc());
      } else {
        return fail(fmt::format("name answer status {}", st));
      }
      break;
    }
    case FrameType::kTaskAnswer: {
      f.key64 = in.get<std::uint64_t>();
      if (in.get<std::uint8_t>() != 0) {
        TaskInfo t;
        const bool has = in.get<std::uint8_t>() != 0;
        const auto dtb = in.get<std::uint64_t>();
        if (has) t.dtb = dtb;
        t.comm = in.str();
        t.tgid = in.get<std::uint32_t>();
        t.ppid = in.get<std::uint32_t>();
        f.task = std::move(t);
      }
      break;
    }
    case FrameType::kExecAnswer: {
      f.key32 = in.get<std::uint32_t>();
      f.key64 = in.get<std::uint64_t>();
      if (in.get<std::uint8_t>() != 0) {
        ExecInfo x;
        x.tgid = in.get<std::uint32_t>();
        x.task = in.get<std::uint64_t>();
        x.task_dtb = in.get<std::uint64_t>();
        x.new_dtb = in.get<std::uint64_t>();
        f.exec = x;
      }
      break;
    }
    case FrameType::kGuestNames: {
      const auto n = in.count();
      for (std::uint32_t i = 0; i < n && in.ok(); ++i) {
        const auto nr = in.get<std::uint32_t>();
        f.names[nr] = in.str();
      }
      break;
    }
    case FrameType::kTargets: {
      const auto np = in.count();
      for (std::uint32_t i = 0; i < np && in.ok(); ++i) f.targets.pids.push_back(in.get<std::uint32_t>());
      const auto nc = in.count();
      for (std::uint32_t i = 0; i < nc && in.ok(); ++i) f.targets.comms.push_back(in.str());
      const bool has = in.get<std::uint8_t>() != 0;
      const auto pid = in.get<std::uint32_t>();
      if (has) f.targets.start_at_exec = pid;
      f.targets.all = in.get<std::uint8_t>() != 0;
      f.targets.follow = in.get<std::uint8_t>() != 0;
      f.targets.method = in.get<std::uint32_t>();
      break;
    }
    case FrameType::kCounters: {
      const auto n = in.count();
      for (std::uint32_t i = 0; i < n && in.ok(); ++i) f.counters.rings.push_back(get_ring_stats(in));
      f.counters.before = get_monitor_stats(in);
      f.counters.after = get_monitor_stats(in);
      break;
    }
    default: return fail(fmt::format("unknown frame type {}", hdr[0]));
  }
  if (!in.ok()) return fail("frame payload shorter than its fields");
  if (in.left() != 0) return fail(fmt::format("{} bytes after the frame's fields", in.left()));
  return std::optional<Frame>(std::move(f));
}

// ---- recording and replaying the guest's answers --------------------------------------------

Result<std::optional<ProcInfo>> RecordingGuest::pid(std::uint32_t pid) {
  auto a = inner_->pid(pid);
  w_->pid_answer(pid, a);
  return a;
}

Result<std::vector<ProcInfo>> RecordingGuest::name(const std::string& comm) {
  auto a = inner_->name(comm);
  w_->name_answer(comm, a);
  return a;
}

std::optional<TaskInfo> RecordingGuest::task(std::uint64_t task_addr) {
  auto a = inner_->task(task_addr);
  w_->task_answer(task_addr, a);
  return a;
}

std::optional<ExecInfo> RecordingGuest::exec(unsigned cpu, std::uint64_t bprm) {
  auto a = inner_->exec(cpu, bprm);
  w_->exec_answer(cpu, bprm, a);
  return a;
}

void ReplayGuest::learn(const Frame& f) {
  switch (f.type) {
    case FrameType::kPidAnswer: pids_[f.key32] = f; break;
    case FrameType::kNameAnswer: names_[f.key_str] = f; break;
    case FrameType::kTaskAnswer:
      if (tasks_.size() > (1U << 16) && !tasks_.count(f.key64)) tasks_.clear();   // bounded
      tasks_[f.key64] = f.task;
      break;
    case FrameType::kExecAnswer:
      if (execs_.size() > (1U << 16)) execs_.clear();   // bounded
      execs_[{f.key32, f.key64}] = f.exec;
      break;
    default: break;
  }
}

Result<std::optional<ProcInfo>> ReplayGuest::pid(std::uint32_t pid) {
  if (auto it = pids_.find(pid); it != pids_.end()) {
    if (it->second.error) return make_error("{}", *it->second.error);
    if (it->second.procs.empty()) return std::optional<ProcInfo>();
    return std::optional<ProcInfo>(it->second.procs.front());
  }
  if (auto it = seen_.find(pid); it != seen_.end())
    return std::optional<ProcInfo>(ProcInfo{pid, it->second.dtb, it->second.comm});
  return make_error("pid {} does not appear in the recording", pid);
}

Result<std::vector<ProcInfo>> ReplayGuest::name(const std::string& comm) {
  if (auto it = names_.find(comm); it != names_.end()) {
    if (it->second.error) return make_error("{}", *it->second.error);
    return it->second.procs;
  }
  std::vector<ProcInfo> v;
  for (const auto& [tgid, s] : seen_)
    if (s.comm == comm) v.push_back(ProcInfo{tgid, s.dtb, s.comm});
  return v;
}

std::optional<TaskInfo> ReplayGuest::task(std::uint64_t task_addr) {
  if (auto it = tasks_.find(task_addr); it != tasks_.end()) return it->second;
  return std::nullopt;
}

std::optional<ExecInfo> ReplayGuest::exec(unsigned cpu, std::uint64_t bprm) {
  if (auto it = execs_.find({cpu, bprm}); it != execs_.end()) return it->second;
  return std::nullopt;
}

Result<void> ReplayGuest::index(RecordingReader& r) {
  std::map<std::uint64_t, std::string> comm_of_task;
  std::map<std::uint32_t, std::uint64_t> task_of_tgid;
  for (;;) {
    auto f = r.next();
    if (!f) return f.error();
    if (!*f) break;
    const Frame& fr = **f;
    if (fr.type == FrameType::kTaskAnswer && fr.task) comm_of_task[fr.key64] = fr.task->comm;
    if (fr.type == FrameType::kPidAnswer && !fr.procs.empty() && fr.procs.front().dtb)
      seen_.emplace(fr.key32, Seen{*fr.procs.front().dtb, fr.procs.front().comm});
    if (fr.type == FrameType::kEvent && fr.event.type == abi::RecordType::kSyscallEntry && fr.event.entry.who.task != 0) {
      const auto& who = fr.event.entry.who;
      if (seen_.size() < kMaxRecordedList) seen_.emplace(who.tgid, Seen{fr.event.dtb().value, {}});
      if (who.pid == who.tgid) task_of_tgid.emplace(who.tgid, who.task);
    }
  }
  for (auto& [tgid, s] : seen_)
    if (s.comm.empty())
      if (auto t = task_of_tgid.find(tgid); t != task_of_tgid.end())
        if (auto c = comm_of_task.find(t->second); c != comm_of_task.end()) s.comm = c->second;
  return {};
}

Result<void> apply_targets(Tracer& t, const RecordedTargets& targets) {
  for (auto pid : targets.pids)
    if (auto r = t.trace_pid(pid); !r) return r;
  for (const auto& c : targets.comms)
    if (auto r = t.trace_comm(c); !r) return r;
  if (targets.start_at_exec) {
    if (auto r = t.trace_pid(*targets.start_at_exec); !r) return r;
    t.start_at_exec(*targets.start_at_exec);
  }
  if (targets.all) t.trace_all();
  return {};
}

void Replayer::take(Frame& f) {
  switch (f.type) {
    case FrameType::kGuestNames: names_ = std::move(f.names); break;
    case FrameType::kTargets: targets_ = std::move(f.targets); break;
    case FrameType::kCounters: counters_ = std::move(f.counters); break;
    default: guest_.learn(f); break;
  }
}

Result<void> Replayer::start() {
  for (;;) {
    auto f = r_->next();
    if (!f) {
      start_error_ = f.error();   // handed out by run(), after what was valid
      return {};
    }
    if (!*f) return {};
    if ((*f)->type == FrameType::kEvent) {
      first_event_ = std::move(**f);
      return {};
    }
    take(**f);
  }
}

Result<void> Replayer::run(Tracer& t) {
  if (start_error_) return *start_error_;
  std::optional<Frame> pending = std::move(first_event_);
  first_event_.reset();
  for (;;) {
    auto f = r_->next();
    if (!f || !*f || (*f)->type == FrameType::kEvent) {
      // The answers the pending event's handling needs are all in: hand it over.
      if (pending)
        if (auto r = t.handle(pending->event); !r)
          return std::move(r).with_context(fmt::format("event at byte {}", pending->offset)).error();
      pending.reset();
      if (!f) return f.error();
      if (!*f) {
        if (!counters_)
          return make_error("corrupt at byte {}: the recording ends without its closing counters frame (cut short?)",
                            r_->offset());
        return {};
      }
      pending = std::move(**f);
      continue;
    }
    take(**f);
  }
}

}  // namespace hvtrace::trace
