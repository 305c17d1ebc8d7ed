#include "publish/sink.hpp"

#include "publish/fileio.hpp"

#include <fmt/core.h>

#include <fcntl.h>
#include <sys/file.h>
#include <sys/stat.h>
#include <unistd.h>

#include <cerrno>
#include <charconv>
#include <cstring>
#include <string_view>
#include <vector>

namespace hvtrace::publish {
namespace {

std::optional<std::uint64_t> number(const std::string* s) {
  if (s == nullptr || s->empty()) return std::nullopt;
  std::uint64_t v = 0;
  const auto r = std::from_chars(s->data(), s->data() + s->size(), v);
  if (r.ec != std::errc() || r.ptr != s->data() + s->size()) return std::nullopt;
  return v;
}

std::uint64_t file_size(int fd) {
  struct stat st{};
  return ::fstat(fd, &st) == 0 ? static_cast<std::uint64_t>(st.st_size) : 0;
}

// Reads a whole (small-ish) file by fd from `from`.
std::string read_from(int fd, std::uint64_t from) {
  std::string out;
  char buf[1 << 16];
  for (std::uint64_t at = from;;) {
    const ssize_t n = ::pread(fd, buf, sizeof buf, static_cast<off_t>(at));
    if (n < 0 && errno == EINTR) continue;
    if (n <= 0) break;
    out.append(buf, static_cast<std::size_t>(n));
    at += static_cast<std::uint64_t>(n);
  }
  return out;
}

class Locked {
 public:
  explicit Locked(int fd) : fd_(fd) {
    while (::flock(fd_, LOCK_EX) != 0 && errno == EINTR) {
    }
  }
  ~Locked() { ::flock(fd_, LOCK_UN); }
  Locked(const Locked&) = delete;
  Locked& operator=(const Locked&) = delete;

 private:
  int fd_;
};

}  // namespace

struct SessionSink::Session {
  std::filesystem::path dir;
  int lock = -1, events = -1, idx = -1;
  std::uint64_t idx_known = 0;   // bytes of .events.idx already read into seqs
  std::set<std::uint64_t> seqs;
  std::uint64_t max_seq = 0;
  bool repaired = false;
  ~Session() {
    for (const int fd : {lock, events, idx})
      if (fd >= 0) ::close(fd);
  }
  // Other collectors' lines since we last looked (called under the lock).
  void refresh() {
    const std::uint64_t size = file_size(idx) / 8 * 8;
    if (size <= idx_known) return;
    const std::string s = read_from(idx, idx_known);
    for (std::size_t at = 0; at + 8 <= s.size() && idx_known + at < size; at += 8) {
      std::uint64_t v = 0;
      for (int b = 7; b >= 0; --b) v = v << 8 | static_cast<unsigned char>(s[at + static_cast<std::size_t>(b)]);
      seqs.insert(v);
      max_seq = std::max(max_seq, v);
    }
    idx_known = size;
  }
  // A crash between the idx record and the line (or mid-line): cut both to what they share.
  void repair() {
    const std::string text = read_from(events, 0);
    std::vector<std::uint64_t> line_ends;   // offset after each '\n'
    for (std::size_t i = 0; i < text.size(); ++i)
      if (text[i] == '\n') line_ends.push_back(i + 1);
    const std::uint64_t records = file_size(idx) / 8;
    const std::uint64_t keep = std::min<std::uint64_t>(records, line_ends.size());
    const std::uint64_t text_keep = keep == 0 ? 0 : line_ends[keep - 1];
    if (text_keep != text.size()) (void)::ftruncate(events, static_cast<off_t>(text_keep));
    if (keep * 8 != file_size(idx)) (void)::ftruncate(idx, static_cast<off_t>(keep * 8));
    repaired = true;
  }
};

SessionSink::SessionSink(std::filesystem::path dir, std::uint64_t gap_deliveries) : dir_(std::move(dir)), gap_deliveries_(gap_deliveries) {}
SessionSink::~SessionSink() { flush(); }

SessionSink::Session& SessionSink::open(const std::string& sid) {
  if (auto it = open_.find(sid); it != open_.end()) return *it->second;
  if (open_.size() >= 256) {   // bound the fds held: drop every session's state (reopened on demand)
    flush();
    open_.clear();
  }
  auto s = std::make_unique<Session>();
  s->dir = dir_ / sid;
  std::error_code ec;
  std::filesystem::create_directories(s->dir, ec);
  s->lock = ::open((s->dir / ".collect.lock").c_str(), O_RDWR | O_CREAT | O_CLOEXEC, 0644);
  s->events = ::open((s->dir / "events.jsonl").c_str(), O_RDWR | O_CREAT | O_APPEND | O_CLOEXEC, 0644);
  s->idx = ::open((s->dir / ".events.idx").c_str(), O_RDWR | O_CREAT | O_APPEND | O_CLOEXEC, 0644);
  if (s->lock < 0 || s->events < 0 || s->idx < 0)
    throw std::runtime_error(fmt::format("collect: cannot write {}: {}", s->dir.string(), std::strerror(errno)));
  stats_.sessions.insert(sid);
  return *open_.emplace(sid, std::move(s)).first->second;
}

SessionSink::Result SessionSink::handle(const Message& m, std::uint64_t delivered) {
  const std::string* kind = m.header(kKindHeader);
  const std::string* sid = m.header(kSessionHeader);
  Result r;
  if (kind == nullptr || sid == nullptr || !valid_sid(*sid)) {
    r.why = "no Hvtrace-Kind or valid Hvtrace-Session header";
  } else if (*kind == "event") {
    r = event(open(*sid), m, delivered);
  } else if (*kind == "file") {
    r = file(open(*sid), m, delivered);
  } else {
    r.why = fmt::format("unknown Hvtrace-Kind '{}'", kind->substr(0, 32));
  }
  switch (r.outcome) {
    case Outcome::kDuplicate: stats_.duplicates++; break;
    case Outcome::kWait: stats_.waits++; break;
    case Outcome::kRejected: stats_.rejected++; break;
    case Outcome::kWritten: break;
  }
  return r;
}

SessionSink::Result SessionSink::event(Session& s, const Message& m, std::uint64_t delivered) {
  const auto seq = number(m.header(kSeqHeader));
  if (!seq || *seq == 0) return {Outcome::kRejected, "event without a valid Hvtrace-Seq"};
  const auto line = event_line(m.data);
  if (!line) return {Outcome::kRejected, "event body is not a JSON object"};
  Locked lock(s.lock);
  if (!s.repaired) s.repair();
  s.refresh();
  if (s.seqs.count(*seq) != 0) return {Outcome::kDuplicate, {}};
  if (*seq > s.max_seq + 1) {
    if (delivered < gap_deliveries_) return {Outcome::kWait, fmt::format("event {} waits for event {}", *seq, s.max_seq + 1)};
    stats_.gaps++;
  }
  std::string rec(8, '\0');
  for (int b = 0; b < 8; ++b) rec[static_cast<std::size_t>(b)] = static_cast<char>((*seq >> (8 * b)) & 0xff);
  if (!write_all(s.idx, rec) || !write_all(s.events, *line))
    throw std::runtime_error(fmt::format("collect: cannot write {}: {}", (s.dir / "events.jsonl").string(), std::strerror(errno)));
  s.idx_known += 8;
  s.seqs.insert(*seq);
  s.max_seq = std::max(s.max_seq, *seq);
  dirty_.insert(&s);
  stats_.events++;
  return {Outcome::kWritten, {}};
}

SessionSink::Result SessionSink::file(Session& s, const Message& m, std::uint64_t delivered) {
  const std::string* name = m.header(kFileHeader);
  const auto off = number(m.header(kOffsetHeader));
  if (name == nullptr || !publishable_file(*name) || !off) return {Outcome::kRejected, "file chunk without a known Hvtrace-File or Hvtrace-Offset"};
  const bool last = m.header(kLastHeader) != nullptr;
  Locked lock(s.lock);
  const auto final_path = s.dir / *name;
  if (std::filesystem::exists(final_path)) return {Outcome::kDuplicate, {}};
  const auto part_path = s.dir / ("." + *name + ".part");
  const int fd = ::open(part_path.c_str(), O_RDWR | O_CREAT | O_CLOEXEC, 0644);
  if (fd < 0) throw std::runtime_error(fmt::format("collect: cannot write {}: {}", part_path.string(), std::strerror(errno)));
  const std::uint64_t size = file_size(fd);
  Result r{Outcome::kWritten, {}};
  if (*off < size && *off + m.data.size() <= size && !last) {
    r = {Outcome::kDuplicate, {}};
  } else if (*off > size) {
    r = delivered < gap_deliveries_ * 5 ? Result{Outcome::kWait, fmt::format("{} chunk at {} waits for byte {}", *name, *off, size)}
                                        : Result{Outcome::kRejected, fmt::format("{}: bytes {}..{} never arrived", *name, size, *off)};
  } else {
    // Append at its offset (a redelivered final chunk rewrites the same bytes).
    const char* p = m.data.data();
    std::size_t left = m.data.size();
    off_t at = static_cast<off_t>(*off);
    while (left > 0) {
      const ssize_t n = ::pwrite(fd, p, left, at);
      if (n < 0 && errno == EINTR) continue;
      if (n <= 0) {
        ::close(fd);
        throw std::runtime_error(fmt::format("collect: cannot write {}: {}", part_path.string(), std::strerror(errno)));
      }
      p += n;
      at += n;
      left -= static_cast<std::size_t>(n);
    }
    ::fdatasync(fd);
    stats_.chunks++;
    if (last) {
      const auto total = number(m.header(kSizeHeader));
      if (total && *total == *off + m.data.size()) {
        (void)::ftruncate(fd, static_cast<off_t>(*total));
        ::fdatasync(fd);
        std::filesystem::rename(part_path, final_path);
        const int d = ::open(s.dir.c_str(), O_RDONLY | O_DIRECTORY | O_CLOEXEC);
        if (d >= 0) {
          ::fsync(d);
          ::close(d);
        }
        stats_.files++;
      } else {
        r = {Outcome::kRejected, fmt::format("{}: final chunk's Hvtrace-Size does not match", *name)};
      }
    }
  }
  ::close(fd);
  return r;
}

void SessionSink::flush() {
  for (Session* s : dirty_) {
    ::fdatasync(s->idx);
    ::fdatasync(s->events);
  }
  dirty_.clear();
}

}  // namespace hvtrace::publish
