// One session's files in DIR/<sid>/: events.jsonl (Cowrie-style JSON lines), transcript.txt (for a
// person), session.cast (asciicast v2) and files/ (the bytes of files written in the session,
// named by their SHA-256). Every write is flushed at once, so a session cut short (hvtrace killed,
// the host crashing) keeps what was captured up to then. Internal to lib/session.
#pragma once

#include <nlohmann/json.hpp>

#include <cstdint>
#include <filesystem>
#include <fstream>
#include <functional>
#include <memory>
#include <string>
#include <string_view>

namespace hvtrace::session {

// Incremental SHA-256 (OpenSSL's libcrypto).
class Sha256 {
 public:
  Sha256();
  ~Sha256();
  Sha256(const Sha256&) = delete;
  Sha256& operator=(const Sha256&) = delete;
  void update(std::string_view data);
  [[nodiscard]] std::string hex();   // finishes; the object is spent afterwards

 private:
  struct Ctx;
  std::unique_ptr<Ctx> ctx_;
};

class SessionWriter {
 public:
  SessionWriter(const std::filesystem::path& root, std::string sid, std::string sensor, std::int64_t realtime_offset_ns);

  [[nodiscard]] const std::string& sid() const { return sid_; }
  [[nodiscard]] const std::filesystem::path& dir() const { return dir_; }
  [[nodiscard]] std::uint64_t errors() const { return errors_; }

  void set_src_ip(std::string ip) { src_ip_ = std::move(ip); }
  // Called with every event after it is written (TrackerConfig::on_event).
  void set_on_event(std::function<void(const nlohmann::json&)> f) { on_event_ = std::move(f); }
  // One line of events.jsonl: `fields` plus eventid, session, timestamp, sensor, src_ip.
  void event(std::string_view eventid, std::uint64_t ns, nlohmann::json fields);
  void transcript(std::string_view text);

  // asciicast v2. The header is written by the first cast call (size and start time then known).
  [[nodiscard]] bool cast_started() const { return cast_start_ns_ != 0; }
  void cast_start(std::uint64_t ns, unsigned width, unsigned height);
  // code: "o", "i", "r"; data must be valid UTF-8 already.
  void cast_event(std::uint64_t ns, std::string_view code, std::string_view data);

  // Kept file bytes: appended to files/.part-<n>, renamed to files/<sha256> when done.
  [[nodiscard]] std::filesystem::path part_path(std::uint64_t n) const;
  void append_part(std::uint64_t n, std::string_view data);
  // Returns the final path (files/<sha256>, or files/<sha256>.partial when cut) or empty.
  std::filesystem::path finish_part(std::uint64_t n, const std::string& sha, bool cut);

  [[nodiscard]] std::string iso(std::uint64_t ns) const;
  [[nodiscard]] std::int64_t unix_ns(std::uint64_t ns) const { return static_cast<std::int64_t>(ns) + offset_; }

 private:
  void write(std::ofstream& f, std::string_view text);

  std::filesystem::path dir_;
  std::string sid_, sensor_, src_ip_;
  std::int64_t offset_;
  std::ofstream events_, transcript_, cast_;
  std::uint64_t cast_start_ns_ = 0;
  std::uint64_t errors_ = 0;
  std::function<void(const nlohmann::json&)> on_event_;
};

}  // namespace hvtrace::session
