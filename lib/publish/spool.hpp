// The publisher's on-disk spool: messages that could not be published yet (server unreachable, or
// behind others that could not), in order, bounded by bytes, kept across runs. One directory:
//   spool.log   records appended in order: "HVS1" | u32 payload length | u32 crc32(payload) | payload
//               payload = u16 subject length | u16 header count | u32 data length | subject |
//                         (u16 key length | u16 value length | key | value)... | data   (little endian)
//   spool.head  the offset of the first record not yet acknowledged (decimal text)
//   .lock       flock()ed while a publisher uses the directory (one process at a time)
// Opening validates every live record: a corrupt or hostile file (bad magic, lengths out of bounds,
// checksum mismatch) is refused with a message naming the file and offset; a record cut short at
// the end (a crash mid-append) is cut off and counted. Not thread-safe: the publisher's I/O thread
// owns it.
#pragma once

#include "publish/message.hpp"

#include <cstdint>
#include <filesystem>
#include <optional>
#include <string>
#include <string_view>
#include <vector>

namespace hvtrace::publish {

inline constexpr std::uint32_t kMaxRecordPayload = 16u << 20;
inline constexpr std::size_t kMaxSubjectBytes = 1024;
inline constexpr std::size_t kMaxHeaders = 32;

// One record's bytes (header + payload).
std::string encode_record(const Message& m);
// Decodes the record at the start of `bytes`: the message and the bytes used; nullopt + `error`
// when it is invalid, nullopt with `error` empty when `bytes` ends before the record does.
std::optional<Message> decode_record(std::string_view bytes, std::size_t& used, std::string& error);

class Spool {
 public:
  struct Stats {
    std::uint64_t records = 0, bytes = 0;   // live: not yet acknowledged
    std::uint64_t torn_tail_bytes = 0;      // cut off at open (a crash mid-append)
  };
  // Opens (creating) the directory and takes its lock. Throws UserError (corrupt file, locked by
  // another process, unwritable) with a message naming the path.
  Spool(std::filesystem::path dir, std::uint64_t max_bytes);
  ~Spool();
  Spool(const Spool&) = delete;
  Spool& operator=(const Spool&) = delete;

  // Appends in order; false (nothing written) when the bound would be passed.
  bool append(const Message& m);
  // Up to n of the oldest messages (and at most max_bytes of them, at least one), not removed.
  std::vector<Message> peek(std::size_t n, std::size_t max_bytes = 4 << 20);
  // Removes the k oldest messages (acknowledged). Persists the head.
  void consume(std::size_t k);
  // Makes appended records durable (fdatasync).
  void sync();

  [[nodiscard]] bool empty() const { return stats_.records == 0; }
  [[nodiscard]] const Stats& stats() const { return stats_; }
  [[nodiscard]] const std::filesystem::path& dir() const { return dir_; }

 private:
  void write_head();
  void compact();

  std::filesystem::path dir_;
  std::uint64_t max_bytes_;
  int fd_ = -1, lock_fd_ = -1;
  std::uint64_t head_ = 0, end_ = 0;   // byte offsets in spool.log
  std::vector<std::uint64_t> sizes_;   // live records' sizes, oldest first (a ring via first_)
  std::size_t first_ = 0;
  Stats stats_;
};

}  // namespace hvtrace::publish
