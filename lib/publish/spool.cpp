#include "publish/spool.hpp"

#include "publish/fileio.hpp"

#include "common/result.hpp"

#include <fmt/core.h>
#include <zlib.h>

#include <fcntl.h>
#include <sys/file.h>
#include <sys/stat.h>
#include <unistd.h>

#include <cerrno>
#include <cstring>

namespace hvtrace::publish {
namespace {

constexpr char kMagic[4] = {'H', 'V', 'S', '1'};
constexpr std::size_t kRecordHeader = 12;

void put16(std::string& s, std::uint32_t v) {
  s.push_back(static_cast<char>(v & 0xff));
  s.push_back(static_cast<char>((v >> 8) & 0xff));
}
void put32(std::string& s, std::uint32_t v) {
  put16(s, v & 0xffff);
  put16(s, v >> 16);
}
std::uint32_t get16(std::string_view s, std::size_t at) {
  return static_cast<std::uint32_t>(static_cast<unsigned char>(s[at])) | static_cast<std::uint32_t>(static_cast<unsigned char>(s[at + 1])) << 8;
}
std::uint32_t get32(std::string_view s, std::size_t at) { return get16(s, at) | get16(s, at + 2) << 16; }

std::uint32_t crc(std::string_view s) {
  return static_cast<std::uint32_t>(crc32(0L, reinterpret_cast<const Bytef*>(s.data()), static_cast<uInt>(s.size())));
}

}  // namespace

std::string encode_record(const Message& m) {
  std::string p;
  put16(p, static_cast<std::uint32_t>(m.subject.size()));
  put16(p, static_cast<std::uint32_t>(m.headers.size()));
  put32(p, static_cast<std::uint32_t>(m.data.size()));
  p += m.subject;
  for (const auto& [k, v] : m.headers) {
    put16(p, static_cast<std::uint32_t>(k.size()));
    put16(p, static_cast<std::uint32_t>(v.size()));
    p += k;
    p += v;
  }
  p += m.data;
  std::string r(kMagic, sizeof kMagic);
  put32(r, static_cast<std::uint32_t>(p.size()));
  put32(r, crc(p));
  return r + p;
}

std::optional<Message> decode_record(std::string_view b, std::size_t& used, std::string& error) {
  error.clear();
  used = 0;
  if (b.size() < kRecordHeader) {
    if (std::memcmp(b.data(), kMagic, std::min(b.size(), sizeof kMagic)) != 0) error = "bad magic (not an hvtrace spool record)";
    return std::nullopt;
  }
  if (std::memcmp(b.data(), kMagic, sizeof kMagic) != 0) {
    error = "bad magic (not an hvtrace spool record)";
    return std::nullopt;
  }
  const std::uint32_t len = get32(b, 4), sum = get32(b, 8);
  if (len > kMaxRecordPayload || len < 8) {
    error = fmt::format("record length {} out of bounds (8..{})", len, kMaxRecordPayload);
    return std::nullopt;
  }
  if (b.size() - kRecordHeader < len) return std::nullopt;   // cut short
  const std::string_view p = b.substr(kRecordHeader, len);
  if (crc(p) != sum) {
    error = "checksum mismatch";
    return std::nullopt;
  }
  const std::uint32_t slen = get16(p, 0), nh = get16(p, 2), dlen = get32(p, 4);
  std::size_t at = 8;
  const auto need = [&](std::size_t n) { return at <= p.size() && p.size() - at >= n; };
  if (slen == 0 || slen > kMaxSubjectBytes || nh > kMaxHeaders || !need(slen)) {
    error = "subject or header count out of bounds";
    return std::nullopt;
  }
  Message m;
  m.subject.assign(p.substr(at, slen));
  at += slen;
  for (const char c : m.subject)
    if (static_cast<unsigned char>(c) <= 0x20 || static_cast<unsigned char>(c) >= 0x7f) {
      error = "subject has a blank or control character";
      return std::nullopt;
    }
  for (std::uint32_t i = 0; i < nh; ++i) {
    if (!need(4)) {
      error = "header runs past the record";
      return std::nullopt;
    }
    const std::uint32_t kl = get16(p, at), vl = get16(p, at + 2);
    at += 4;
    if (kl == 0 || !need(std::size_t{kl} + vl)) {
      error = "header runs past the record";
      return std::nullopt;
    }
    std::string k(p.substr(at, kl)), v(p.substr(at + kl, vl));
    at += kl + vl;
    for (const char c : k + v)
      if (c == '\r' || c == '\n' || c == '\0') {
        error = "header has a line break or NUL";
        return std::nullopt;
      }
    if (k.find(':') != std::string::npos) {
      error = "header name has ':'";
      return std::nullopt;
    }
    m.headers.emplace_back(std::move(k), std::move(v));
  }
  if (p.size() - at != dlen) {
    error = "data length does not match the record";
    return std::nullopt;
  }
  m.data.assign(p.substr(at));
  if (m.msg_id().empty()) {
    error = "record has no Nats-Msg-Id";
    return std::nullopt;
  }
  used = kRecordHeader + len;
  return m;
}

Spool::Spool(std::filesystem::path dir, std::uint64_t max_bytes) : dir_(std::move(dir)), max_bytes_(max_bytes) {
  std::error_code ec;
  std::filesystem::create_directories(dir_, ec);
  if (ec) throw UserError(fmt::format("spool {}: {}", dir_.string(), ec.message()));
  lock_fd_ = ::open((dir_ / ".lock").c_str(), O_RDWR | O_CREAT | O_CLOEXEC, 0600);
  if (lock_fd_ < 0) throw UserError(fmt::format("spool {}: {}", dir_.string(), std::strerror(errno)));
  if (::flock(lock_fd_, LOCK_EX | LOCK_NB) != 0) {
    ::close(lock_fd_);
    throw UserError(fmt::format("spool {} is in use by another hvtrace process (give each publisher its own --spool DIR)", dir_.string()));
  }
  const auto log = dir_ / "spool.log";
  fd_ = ::open(log.c_str(), O_RDWR | O_CREAT | O_CLOEXEC, 0600);
  if (fd_ < 0) {
    ::close(lock_fd_);
    throw UserError(fmt::format("spool {}: {}", log.string(), std::strerror(errno)));
  }
  try {
    struct stat st{};
    if (::fstat(fd_, &st) != 0) throw UserError(fmt::format("spool {}: {}", log.string(), std::strerror(errno)));
    const auto size = static_cast<std::uint64_t>(st.st_size);
    // The head: decimal text; absent = 0.
    {
      std::string h(32, '\0');
      const int hfd = ::open((dir_ / "spool.head").c_str(), O_RDONLY | O_CLOEXEC);
      if (hfd >= 0) {
        const ssize_t n = ::read(hfd, h.data(), h.size());
        ::close(hfd);
        h.resize(n > 0 ? static_cast<std::size_t>(n) : 0);
        while (!h.empty() && (h.back() == '\n' || h.back() == ' ')) h.pop_back();
        std::uint64_t v = 0;
        bool ok = !h.empty() && h.size() <= 20;
        for (const char c : h) {
          if (c < '0' || c > '9') ok = false;
          if (ok) v = v * 10 + static_cast<std::uint64_t>(c - '0');
        }
        if (!h.empty() && (!ok || v > size))
          throw UserError(fmt::format("spool {}: spool.head is corrupt ('{}' for a log of {} bytes); move the spool directory aside",
                                      dir_.string(), h.substr(0, 20), size));
        head_ = ok ? v : 0;
      }
    }
    // Validate every live record (bounded by what the file holds; records are read one by one).
    std::uint64_t at = head_;
    std::string buf;
    while (at < size) {
      const std::uint64_t left = size - at;
      buf.resize(static_cast<std::size_t>(std::min<std::uint64_t>(left, kRecordHeader)));
      if (!pread_all(fd_, buf.data(), buf.size(), at)) throw UserError(fmt::format("spool {}: read failed", log.string()));
      std::size_t used = 0;
      std::string err;
      std::optional<Message> m;
      if (buf.size() == kRecordHeader && std::memcmp(buf.data(), kMagic, 4) == 0) {
        const std::uint32_t len = get32(buf, 4);
        if (len <= kMaxRecordPayload && left >= kRecordHeader + len) {
          buf.resize(kRecordHeader + len);
          if (!pread_all(fd_, buf.data(), buf.size(), at)) throw UserError(fmt::format("spool {}: read failed", log.string()));
        }
      }
      m = decode_record(buf, used, err);
      if (!m && !err.empty())
        throw UserError(fmt::format("spool {}: corrupt record at offset {}: {}; refusing to send from it (move the spool directory aside "
                                    "to start without it)",
                                    log.string(), at, err));
      if (!m) {   // cut short at the end: a crash mid-append
        stats_.torn_tail_bytes = left;
        if (::ftruncate(fd_, static_cast<off_t>(at)) != 0) throw UserError(fmt::format("spool {}: {}", log.string(), std::strerror(errno)));
        break;
      }
      sizes_.push_back(used);
      stats_.records++;
      stats_.bytes += used;
      at += used;
    }
    end_ = at;
  } catch (...) {
    ::close(fd_);
    ::close(lock_fd_);
    throw;
  }
}

Spool::~Spool() {
  if (fd_ >= 0) {
    ::fdatasync(fd_);
    ::close(fd_);
  }
  if (lock_fd_ >= 0) ::close(lock_fd_);
}

bool Spool::append(const Message& m) {
  const std::string r = encode_record(m);
  if (stats_.bytes + r.size() > max_bytes_ || r.size() - kRecordHeader > kMaxRecordPayload) return false;
  if (::pwrite(fd_, r.data(), r.size(), static_cast<off_t>(end_)) != static_cast<ssize_t>(r.size())) {
    (void)::ftruncate(fd_, static_cast<off_t>(end_));
    return false;
  }
  end_ += r.size();
  sizes_.push_back(r.size());
  stats_.records++;
  stats_.bytes += r.size();
  return true;
}

std::vector<Message> Spool::peek(std::size_t n, std::size_t max_bytes) {
  std::vector<Message> out;
  std::uint64_t at = head_;
  std::size_t total = 0;
  std::string buf;
  for (std::size_t i = first_; i < sizes_.size() && out.size() < n; ++i) {
    const std::uint64_t sz = sizes_[i];
    if (!out.empty() && total + sz > max_bytes) break;
    buf.resize(static_cast<std::size_t>(sz));
    std::size_t used = 0;
    std::string err;
    if (!pread_all(fd_, buf.data(), buf.size(), at)) break;
    auto m = decode_record(buf, used, err);
    if (!m) break;   // validated at open/append: cannot happen unless the file changed under us
    out.push_back(std::move(*m));
    total += sz;
    at += sz;
  }
  return out;
}

void Spool::consume(std::size_t k) {
  for (std::size_t i = 0; i < k && first_ < sizes_.size(); ++i) {
    head_ += sizes_[first_];
    stats_.bytes -= sizes_[first_];
    stats_.records--;
    ++first_;
  }
  if (first_ == sizes_.size()) {   // all sent: start the file over
    sizes_.clear();
    first_ = 0;
    head_ = end_ = 0;
    (void)::ftruncate(fd_, 0);
  } else if (first_ > 4096 && first_ * 2 > sizes_.size()) {
    sizes_.erase(sizes_.begin(), sizes_.begin() + static_cast<std::ptrdiff_t>(first_));
    first_ = 0;
  }
  if (head_ > max_bytes_ / 2 && head_ > (1u << 20)) compact();
  write_head();
}

void Spool::compact() {
  // Copy the live records to a new log, then rename it over the old one (head becomes 0).
  const auto tmp = dir_ / "spool.log.tmp";
  const int t = ::open(tmp.c_str(), O_RDWR | O_CREAT | O_TRUNC | O_CLOEXEC, 0600);
  if (t < 0) return;
  std::string buf(1 << 20, '\0');
  bool ok = true;
  for (std::uint64_t at = head_; at < end_ && ok;) {
    const std::size_t n = static_cast<std::size_t>(std::min<std::uint64_t>(buf.size(), end_ - at));
    ok = pread_all(fd_, buf.data(), n, at) && write_all(t, std::string_view(buf.data(), n));
    at += n;
  }
  if (!ok || ::fdatasync(t) != 0) {
    ::close(t);
    ::unlink(tmp.c_str());
    return;
  }
  // Head 0 must be on disk before the rename, or a crash could apply the old head to the new log.
  const std::uint64_t old_head = head_;
  head_ = 0;
  write_head();
  if (::rename(tmp.c_str(), (dir_ / "spool.log").c_str()) != 0) {
    head_ = old_head;
    write_head();
    ::close(t);
    ::unlink(tmp.c_str());
    return;
  }
  ::close(fd_);
  fd_ = t;
  end_ -= old_head;
}

void Spool::write_head() {
  const auto tmp = dir_ / "spool.head.tmp";
  const int h = ::open(tmp.c_str(), O_WRONLY | O_CREAT | O_TRUNC | O_CLOEXEC, 0600);
  if (h < 0) return;
  const std::string s = std::to_string(head_) + "\n";
  const bool ok = write_all(h, s);
  ::close(h);
  if (ok) ::rename(tmp.c_str(), (dir_ / "spool.head").c_str());
}

void Spool::sync() { ::fdatasync(fd_); }

}  // namespace hvtrace::publish
