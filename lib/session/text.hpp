// Text handling for the session record, every byte of which comes from the guest: UTF-8 made
// valid for JSON (also across reads that split a character), the command line as the user finally
// entered it (a terminal line editor replayed over the typed bytes), and terminal output turned
// into plain lines for the transcript. All bounded: nothing grows past the limits given.
#pragma once

#include <cstddef>
#include <cstdint>
#include <deque>
#include <functional>
#include <string>
#include <string_view>
#include <vector>

namespace hvtrace::session {

// Valid UTF-8 from arbitrary bytes: each invalid byte becomes U+FFFD.
[[nodiscard]] std::string sanitize_utf8(std::string_view in);

// One line of program output as transcript.txt shows it: text as is (invalid UTF-8 replaced,
// control bytes other than tab written as \xNN); a line that is mostly not text (a binary protocol
// such as SFTP's on a session without a terminal) as "[N bytes of binary output]".
[[nodiscard]] std::string transcript_line(std::string_view line);

// Streaming version: an incomplete sequence at the end of one chunk is kept for the next one,
// so a character split across two reads is not mangled. flush() gives back what is pending.
class Utf8Stream {
 public:
  [[nodiscard]] std::string feed(std::string_view in);
  [[nodiscard]] std::string flush();

 private:
  std::string pending_;   // at most 3 bytes
};

// ISO 8601 UTC with microseconds and Z: "2026-12-01T10:02:03.123456Z".
[[nodiscard]] std::string iso_time(std::int64_t unix_ns);

// Replays what a line editor (readline, busybox's lineedit, the tty's canonical mode) does with
// the typed bytes: printable bytes insert at the cursor, backspace (0x7f, 0x08) erases a
// character, Ctrl-U kills to the start of the line, Ctrl-W a word, Ctrl-K to the end, Ctrl-A/E and
// Home/End/arrows move, Delete erases under the cursor, Up/Down recall history, Ctrl-C drops the
// line, Enter (\r or \n; \r\n counts once) ends it. Other escape sequences are skipped whole.
// What cannot be known from the input alone (tab completion, the shell's own history file) is not
// guessed: a tab is kept as a tab.
class LineEditor {
 public:
  struct Line {
    std::string text;
    bool truncated = false;     // longer than max_bytes: the rest was dropped
  };
  explicit LineEditor(std::size_t max_bytes, std::size_t max_history = 256)
      : max_(max_bytes), max_history_(max_history) {}
  // Feed typed bytes; each completed line is passed to `done`. Returns the bytes dropped because
  // of the line cap.
  std::uint64_t feed(std::string_view in, const std::function<void(Line)>& done);
  [[nodiscard]] const std::string& current() const { return buf_; }

 private:
  enum class Esc : std::uint8_t { kNone, kEsc, kCsi, kSs3, kString };
  void insert(char c, std::uint64_t& dropped);
  void erase_before();
  void erase_at();
  void recall(int dir);
  void apply_csi(std::string_view params, char final);

  std::size_t max_, max_history_;
  std::string buf_;
  std::size_t cur_ = 0;
  bool truncated_ = false;
  bool last_cr_ = false;
  Esc esc_ = Esc::kNone;
  std::string esc_params_;
  std::deque<std::string> history_;
  std::size_t hist_pos_ = 0;   // == history_.size(): not browsing
};

// Terminal output as plain lines for a person: escape sequences removed, \r\n and lone \r
// handled (a progress bar overwrites its line), backspace applied, control bytes shown as
// \xNN, each line bounded (a longer one ends in a cut mark).
class ScreenLines {
 public:
  explicit ScreenLines(std::size_t max_line) : max_(max_line) {}
  // Feed output bytes; each completed line is passed to `line`.
  void feed(std::string_view in, const std::function<void(const std::string&)>& line);
  // The line being written (no newline yet), e.g. the prompt and the echo of what is being typed.
  [[nodiscard]] const std::string& partial() const { return cur_; }
  void drop_partial() { cur_.clear(); cut_ = false; col_ = 0; }

 private:
  enum class Esc : std::uint8_t { kNone, kEsc, kCsi, kString, kStringEsc };
  std::size_t max_;
  std::string cur_;
  std::size_t col_ = 0;        // byte position in cur_ where the next byte lands (after \r: 0)
  bool cut_ = false;
  Esc esc_ = Esc::kNone;
  std::size_t esc_len_ = 0;
};

}  // namespace hvtrace::session
