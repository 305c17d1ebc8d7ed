// Text handling for the session record, every byte of which comes from the guest: UTF-8 made
// valid for JSON (also across reads that split a character), the command line as the user finally
// entered it (a terminal line editor replayed over the typed bytes), and terminal output turned
// into plain lines for the transcript. All bounded: nothing grows past the limits given.
#pragma once

#include <algorithm>
#include <cstddef>
#include <cstdint>
#include <deque>
#include <functional>
#include <optional>
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

// Escape sequences in terminal output, byte by byte: CSI (ESC [ parameters final), strings (OSC,
// DCS, APC, PM, SOS: up to BEL or ESC \\), ESC with intermediates and a final. A sequence longer
// than 256 bytes is given up (its remaining bytes are then text). Parameters: at most 32 bytes.
class EscParser {
 public:
  enum class Step : std::uint8_t {
    kText,     // not part of a sequence: the caller shows it
    kInside,   // consumed
    kCsi,      // a CSI sequence ended with this byte (its final); params() holds its parameters
  };
  Step step(unsigned char c);
  [[nodiscard]] const std::string& params() const { return params_; }

 private:
  enum class State : std::uint8_t { kNone, kEsc, kCsi, kString, kStringEsc };
  State state_ = State::kNone;
  std::size_t len_ = 0;
  std::string params_;
};

// The line being edited as the terminal shows it: a model of the current screen row (the logical
// row: a line wrapped at the window width stays one row) over the bytes the terminal shows.
// Printable characters overwrite at the cursor; \r, \n, \b, TAB stops, BEL and the CSI sequences
// a line editor uses to redraw (cursor left/right/up/down and to a column, erase in line and in
// display, delete, insert and erase characters) are applied; other sequences are skipped. The
// prompt is what the row holds left of the cursor when the first key of a line is typed
// (mark_prompt); line() is the row after it, when the row still starts with that prompt (after a
// completion listing the shell redraws prompt and line on a new row). Bounded: at most max_cells
// cells; a longer row is lost (line() gives nothing) until the next row.
class EchoLine {
 public:
  explicit EchoLine(std::size_t max_cells) : max_(max_cells) {}
  // Feed output bytes; `row_end` is called at each newline that ends the row (not one that only
  // moves down inside a wrapped row), before the row is cleared.
  void feed(std::string_view out, const std::function<void()>& row_end = {});
  void set_width(unsigned cols) { width_ = cols == 0 ? 80 : std::min(cols, 1024u); }   // the client sets it
  // The row left of the cursor is the prompt. Returns false (prompt unknown) when that is empty.
  bool mark_prompt();
  void forget_prompt() { prompt_.clear(); }
  [[nodiscard]] bool prompt_known() const { return !prompt_.empty(); }
  [[nodiscard]] std::string prompt_text() const;   // UTF-8; empty when unknown
  struct Text {
    std::string text;            // UTF-8 (invalid bytes were replaced)
    std::size_t cursor = 0;      // byte offset of the cursor in text
    bool truncated = false;      // longer than max_bytes (cut)
  };
  // The line after the prompt (trailing blanks right of the cursor dropped), or nothing.
  [[nodiscard]] std::optional<Text> line(std::size_t max_bytes) const;
  [[nodiscard]] std::string row() const;   // the whole row, for tests

 private:
  void put(char32_t c);
  void csi(char final);
  [[nodiscard]] unsigned param(std::size_t i, unsigned dflt) const;
  void end_row(const std::function<void()>& row_end);

  std::size_t max_;
  unsigned width_ = 80;
  std::u32string row_;           // cells; unwritten cells inside the row are blanks
  std::size_t cur_ = 0;          // cell index of the cursor in the logical row
  bool wrap_pending_ = false;    // the last column was just written (the terminal has not wrapped yet)
  bool lost_ = false;            // the row outgrew max_ or the cursor left it upwards
  std::u32string prompt_;
  EscParser esc_;
  std::string utf8_;             // a character being assembled (at most 4 bytes)
  std::size_t utf8_need_ = 0;
};

// Replays what a line editor (readline, busybox's lineedit, the tty's canonical mode) does with
// the typed bytes: printable bytes insert at the cursor, backspace (0x7f, 0x08) erases a
// character, Ctrl-U kills to the start of the line, Ctrl-W a word, Ctrl-K to the end, Ctrl-A/E and
// Home/End/arrows move, Delete erases under the cursor, Up/Down recall history, Ctrl-C drops the
// line (passed on marked `abandoned`, empty when nothing was typed), Enter (\r or \n; \r\n counts
// once) ends it. Other escape sequences are skipped whole.
// What the keys alone cannot tell — TAB (completion), Up/Down/Ctrl-P/Ctrl-N (the shell's history
// holds lines from before this session), Ctrl-R (history search) and non-ASCII characters (a
// shell without a UTF-8 locale takes their bytes for Meta keys) — is taken from the echo
// (output(): the bytes the terminal shows, modelled by an EchoLine): from such a key on, the line
// follows what the terminal shows after the prompt, and its Enter completes the line only when
// the echo reaches the newline (the completion's text may arrive after the Enter key). With no
// echo seen (prompt unknown, the row not starting with it) the key replay stands, a tab as a tab.
class LineEditor {
 public:
  struct Line {
    std::string text;
    bool truncated = false;     // longer than max_bytes: the rest was dropped
    bool from_echo = false;     // taken from what the terminal showed (completion, history)
    std::uint64_t at = 0;       // the `at` of the feed() that carried its Enter
    std::uint64_t at_entry = 0; // and its `at_entry`
    std::string prompt;         // the row left of its first key, when the echo showed it (else empty)
    bool abandoned = false;     // Ctrl-C dropped it (text: what it held then; not run, not in history)
  };
  explicit LineEditor(std::size_t max_bytes, std::size_t max_history = 256)
      : max_(max_bytes), max_history_(max_history), echo_(std::min<std::size_t>(max_bytes, kMaxEchoCells)) {}
  // Feed typed bytes; each completed line is passed to `done`. Returns the bytes dropped because
  // of the line cap.
  // `at`, `at_entry`: tags the lines this feed completes carry (the tracker's times of the write).
  std::uint64_t feed(std::string_view in, const std::function<void(Line)>& done, std::uint64_t at = 0,
                     std::uint64_t at_entry = 0);
  // Feed what the terminal showed (the echo and everything else); a line whose Enter waits for
  // its echo is passed to `done` at the echo's newline.
  void output(std::string_view out, const std::function<void(Line)>& done);
  // A line whose Enter was typed but whose echo never ended is passed on as it stands (session end).
  void flush(const std::function<void(Line)>& done);
  void set_width(unsigned cols) { echo_.set_width(cols); }
  [[nodiscard]] const std::string& current() const { return buf_; }
  [[nodiscard]] const EchoLine& echo() const { return echo_; }
  // An Enter was typed whose line waits for its echo (the shell may already run it).
  [[nodiscard]] bool waiting() const { return waiting_.has_value(); }
  static constexpr std::size_t kMaxEchoCells = 8192;

 private:
  enum class Esc : std::uint8_t { kNone, kEsc, kCsi, kSs3, kString };
  void insert(char c, std::uint64_t& dropped);
  void erase_before();
  void erase_at();
  void recall(int dir);
  void apply_csi(std::string_view params, char final);
  void enter(const std::function<void(Line)>& done, std::uint64_t at, std::uint64_t at_entry);
  void deliver(Line l, const std::function<void(Line)>& done);
  void finish_waiting(const std::function<void(Line)>& done);
  void key_seen();
  void sync_from_echo();
  void reset_line();

  std::size_t max_, max_history_;
  std::string buf_;
  std::size_t cur_ = 0;
  bool truncated_ = false;
  bool last_cr_ = false;
  Esc esc_ = Esc::kNone;
  std::string esc_params_;
  std::deque<std::string> history_;
  std::size_t hist_pos_ = 0;   // == history_.size(): not browsing
  // The echo.
  EchoLine echo_;
  bool line_started_ = false;  // a key of this line was typed (the prompt was taken then)
  bool own_prompt_ = false;    // ... and the echo's prompt is this line's (not typed ahead)
  bool from_echo_ = false;     // a key the replay cannot follow was typed: the echo tells the line
  std::optional<Line> waiting_;   // Enter typed, its echo's newline not seen yet
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
  void drop_partial() { cur_.clear(); cut_ = false; col_ = 0; raw_ = 0; hidden_ = 0; }

 private:
  std::size_t max_;
  std::string cur_;
  std::size_t col_ = 0;        // byte position in cur_ where the next byte lands (after \r: 0)
  bool cut_ = false;
  // Of the line's bytes as written: all of them, and the control bytes a terminal shows nothing
  // for (NUL, BEL, ...: not \t, \r, backspace or escape sequences). A line that is mostly such
  // bytes and invalid UTF-8 is a protocol, not text (SFTP on a session without a pty): it is
  // passed on as "[N bytes of binary output]".
  std::size_t raw_ = 0, hidden_ = 0;
  EscParser esc_;
};

}  // namespace hvtrace::session
