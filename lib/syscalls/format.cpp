// Decoding one call into strace's text. Each Decoder prints its arguments the way strace's
// decoder for that call does (flags by name, fds as numbers, strings quoted and escaped);
// a pointer whose data the monitor did not capture prints as hex, never guessed.
// Hostile captures: every length is clamped to the data actually held, arguments > 5 are
// ignored, argv counts are trusted only as far as the strings present.
#include "syscalls/syscalls.hpp"

#include <arpa/inet.h>

#include <algorithm>
#include <cstring>

namespace hvtrace::syscalls {
namespace {

struct Flag {
  std::uint64_t bits;
  std::string_view name;
};

// printf's %#lx: "0" for zero, "0x1f" otherwise.
void append_hex(std::string& out, std::uint64_t v) {
  if (v == 0) out += '0';
  else fmt::format_to(std::back_inserter(out), "{:#x}", v);
}
std::string hex_string(std::uint64_t v) {
  std::string s;
  append_hex(s, v);
  return s;
}

// strace's printflags: table order, multi-bit names first where they overlap; leftovers in hex.
void append_flags(std::string& out, std::uint64_t v, std::span<const Flag> table, std::string_view zero = "0") {
  if (v == 0) {
    out += zero;
    return;
  }
  bool any = false;
  for (const auto& f : table) {
    if (f.bits != 0 && (v & f.bits) == f.bits) {
      if (any) out += '|';
      out += f.name;
      v &= ~f.bits;
      any = true;
    }
  }
  if (v != 0) {
    if (any) out += '|';
    fmt::format_to(std::back_inserter(out), "{:#x}", v);
  }
}

// strace's printxval: the name, or the number and a comment naming the family.
void append_xval(std::string& out, std::uint64_t v, std::span<const Flag> table, std::string_view unknown) {
  for (const auto& f : table)
    if (f.bits == v) {
      out += f.name;
      return;
    }
  append_hex(out, v);
  fmt::format_to(std::back_inserter(out), " /* {} */", unknown);
}

constexpr Flag kOpenFlags[] = {
    {0100, "O_CREAT"},        {0200, "O_EXCL"},         {0400, "O_NOCTTY"},       {01000, "O_TRUNC"},
    {02000, "O_APPEND"},      {04000, "O_NONBLOCK"},    {04010000, "O_SYNC"},     {04000000, "__O_SYNC"},
    {010000, "O_DSYNC"},      {040000, "O_DIRECT"},     {0100000, "O_LARGEFILE"}, {0400000, "O_NOFOLLOW"},
    {01000000, "O_NOATIME"},  {02000000, "O_CLOEXEC"},  {010000000, "O_PATH"},    {020200000, "O_TMPFILE"},
    {020000000, "__O_TMPFILE"}, {0200000, "O_DIRECTORY"}, {020000, "FASYNC"},
};
constexpr std::uint64_t kOCreat = 0100, kOTmpfile = 020000000;
constexpr std::string_view kAccModes[] = {"O_RDONLY", "O_WRONLY", "O_RDWR", "O_ACCMODE"};

void append_open_flags(std::string& out, std::uint64_t v) {
  out += kAccModes[v & 3];
  v &= ~std::uint64_t{3};
  if (v == 0) return;
  out += '|';
  append_flags(out, v, kOpenFlags);
}

constexpr Flag kAtFlags[] = {
    {0x100, "AT_SYMLINK_NOFOLLOW"}, {0x200, "AT_REMOVEDIR"}, {0x400, "AT_SYMLINK_FOLLOW"},
    {0x800, "AT_NO_AUTOMOUNT"},     {0x1000, "AT_EMPTY_PATH"}, {0x8000, "AT_RECURSIVE"},
};
constexpr Flag kFaccessatFlags[] = {{0x100, "AT_SYMLINK_NOFOLLOW"}, {0x200, "AT_EACCESS"}, {0x1000, "AT_EMPTY_PATH"}};
constexpr Flag kStatxFlags[] = {
    {0x100, "AT_SYMLINK_NOFOLLOW"}, {0x800, "AT_NO_AUTOMOUNT"}, {0x1000, "AT_EMPTY_PATH"},
    {0x2000, "AT_STATX_FORCE_SYNC"}, {0x4000, "AT_STATX_DONT_SYNC"},
};
constexpr Flag kStatxMask[] = {
    {0xfff, "STATX_ALL"},      {0x7ff, "STATX_BASIC_STATS"}, {0x1, "STATX_TYPE"},   {0x2, "STATX_MODE"},
    {0x4, "STATX_NLINK"},      {0x8, "STATX_UID"},           {0x10, "STATX_GID"},   {0x20, "STATX_ATIME"},
    {0x40, "STATX_MTIME"},     {0x80, "STATX_CTIME"},        {0x100, "STATX_INO"},  {0x200, "STATX_SIZE"},
    {0x400, "STATX_BLOCKS"},   {0x800, "STATX_BTIME"},       {0x1000, "STATX_MNT_ID"}, {0x2000, "STATX_DIOALIGN"},
    {0x4000, "STATX_MNT_ID_UNIQUE"}, {0x8000, "STATX_SUBVOL"}, {0x10000, "STATX_WRITE_ATOMIC"},
};
constexpr Flag kAccessModes[] = {{4, "R_OK"}, {2, "W_OK"}, {1, "X_OK"}};
constexpr Flag kRenameFlags[] = {{1, "RENAME_NOREPLACE"}, {2, "RENAME_EXCHANGE"}, {4, "RENAME_WHITEOUT"}};
constexpr Flag kProt[] = {{1, "PROT_READ"}, {2, "PROT_WRITE"}, {4, "PROT_EXEC"}, {0x8, "PROT_SEM"},
                          {0x01000000, "PROT_GROWSDOWN"}, {0x02000000, "PROT_GROWSUP"}};
constexpr Flag kMapTypes[] = {{1, "MAP_SHARED"}, {2, "MAP_PRIVATE"}, {3, "MAP_SHARED_VALIDATE"}};
constexpr Flag kMapFlags[] = {
    {0x10, "MAP_FIXED"},       {0x20, "MAP_ANONYMOUS"},   {0x40, "MAP_32BIT"},        {0x80, "MAP_ABOVE4G"},
    {0x4000, "MAP_NORESERVE"}, {0x8000, "MAP_POPULATE"},  {0x10000, "MAP_NONBLOCK"},  {0x100, "MAP_GROWSDOWN"},
    {0x800, "MAP_DENYWRITE"},  {0x1000, "MAP_EXECUTABLE"}, {0x2000, "MAP_LOCKED"},    {0x20000, "MAP_STACK"},
    {0x40000, "MAP_HUGETLB"},  {0x80000, "MAP_SYNC"},     {0x4000000, "MAP_UNINITIALIZED"},
    {0x100000, "MAP_FIXED_NOREPLACE"},
};
constexpr Flag kCloneFlags[] = {
    {0x100, "CLONE_VM"},           {0x200, "CLONE_FS"},            {0x400, "CLONE_FILES"},
    {0x800, "CLONE_SIGHAND"},      {0x1000, "CLONE_PIDFD"},        {0x2000, "CLONE_PTRACE"},
    {0x4000, "CLONE_VFORK"},       {0x8000, "CLONE_PARENT"},       {0x10000, "CLONE_THREAD"},
    {0x20000, "CLONE_NEWNS"},      {0x40000, "CLONE_SYSVSEM"},     {0x80000, "CLONE_SETTLS"},
    {0x100000, "CLONE_PARENT_SETTID"}, {0x200000, "CLONE_CHILD_CLEARTID"}, {0x800000, "CLONE_UNTRACED"},
    {0x1000000, "CLONE_CHILD_SETTID"}, {0x2000000, "CLONE_NEWCGROUP"}, {0x4000000, "CLONE_NEWUTS"},
    {0x8000000, "CLONE_NEWIPC"},   {0x10000000, "CLONE_NEWUSER"},  {0x20000000, "CLONE_NEWPID"},
    {0x40000000, "CLONE_NEWNET"},  {0x80000000, "CLONE_IO"},
};
constexpr Flag kWaitOptions[] = {
    {1, "WNOHANG"}, {2, "WUNTRACED"}, {4, "WEXITED"}, {8, "WCONTINUED"}, {0x1000000, "WNOWAIT"},
    {0x80000000, "__WCLONE"}, {0x40000000, "__WALL"}, {0x20000000, "__WNOTHREAD"},
};
constexpr Flag kFcntlCmds[] = {
    {0, "F_DUPFD"},        {1, "F_GETFD"},         {2, "F_SETFD"},        {3, "F_GETFL"},
    {4, "F_SETFL"},        {5, "F_GETLK"},         {6, "F_SETLK"},        {7, "F_SETLKW"},
    {8, "F_SETOWN"},       {9, "F_GETOWN"},        {10, "F_SETSIG"},      {11, "F_GETSIG"},
    {12, "F_GETLK64"},     {13, "F_SETLK64"},      {14, "F_SETLKW64"},    {15, "F_SETOWN_EX"},
    {16, "F_GETOWN_EX"},   {17, "F_GETOWNER_UIDS"}, {36, "F_OFD_GETLK"},  {37, "F_OFD_SETLK"},
    {38, "F_OFD_SETLKW"},  {1024, "F_SETLEASE"},   {1025, "F_GETLEASE"},  {1026, "F_NOTIFY"},
    {1027, "F_DUPFD_QUERY"}, {1028, "F_CREATED_QUERY"}, {1029, "F_CANCELLK"}, {1030, "F_DUPFD_CLOEXEC"},
    {1031, "F_SETPIPE_SZ"}, {1032, "F_GETPIPE_SZ"}, {1033, "F_ADD_SEALS"}, {1034, "F_GET_SEALS"},
};
constexpr Flag kFdFlags[] = {{1, "FD_CLOEXEC"}};
constexpr Flag kWhence[] = {{0, "SEEK_SET"}, {1, "SEEK_CUR"}, {2, "SEEK_END"}, {3, "SEEK_DATA"}, {4, "SEEK_HOLE"}};
constexpr Flag kSigHow[] = {{0, "SIG_BLOCK"}, {1, "SIG_UNBLOCK"}, {2, "SIG_SETMASK"}};
constexpr Flag kAddrFamilies[] = {
    {0, "AF_UNSPEC"},  {1, "AF_UNIX"},     {2, "AF_INET"},    {3, "AF_AX25"},     {4, "AF_IPX"},
    {5, "AF_APPLETALK"}, {9, "AF_X25"},   {10, "AF_INET6"},  {15, "AF_KEY"},     {16, "AF_NETLINK"},
    {17, "AF_PACKET"}, {29, "AF_CAN"},     {30, "AF_TIPC"},   {31, "AF_BLUETOOTH"}, {38, "AF_ALG"},
    {40, "AF_VSOCK"},  {44, "AF_XDP"},     {45, "AF_MCTP"},
};
constexpr Flag kSockTypes[] = {{1, "SOCK_STREAM"}, {2, "SOCK_DGRAM"}, {3, "SOCK_RAW"}, {4, "SOCK_RDM"},
                               {5, "SOCK_SEQPACKET"}, {6, "SOCK_DCCP"}, {10, "SOCK_PACKET"}};
constexpr Flag kSockFlags[] = {{02000000, "SOCK_CLOEXEC"}, {04000, "SOCK_NONBLOCK"}};
constexpr Flag kIpProtos[] = {{0, "IPPROTO_IP"},   {1, "IPPROTO_ICMP"}, {2, "IPPROTO_IGMP"}, {6, "IPPROTO_TCP"},
                              {17, "IPPROTO_UDP"}, {41, "IPPROTO_IPV6"}, {58, "IPPROTO_ICMPV6"},
                              {132, "IPPROTO_SCTP"}, {136, "IPPROTO_UDPLITE"}, {255, "IPPROTO_RAW"},
                              {262, "IPPROTO_MPTCP"}};
constexpr Flag kNetlinkProtos[] = {{0, "NETLINK_ROUTE"}, {4, "NETLINK_SOCK_DIAG"}, {9, "NETLINK_AUDIT"},
                                   {15, "NETLINK_KOBJECT_UEVENT"}, {16, "NETLINK_GENERIC"}};
constexpr Flag kMsgFlags[] = {
    {0x1, "MSG_OOB"},          {0x2, "MSG_PEEK"},       {0x4, "MSG_DONTROUTE"},   {0x8, "MSG_CTRUNC"},
    {0x10, "MSG_PROXY"},       {0x20, "MSG_TRUNC"},     {0x40, "MSG_DONTWAIT"},   {0x80, "MSG_EOR"},
    {0x100, "MSG_WAITALL"},    {0x200, "MSG_FIN"},      {0x400, "MSG_SYN"},       {0x800, "MSG_CONFIRM"},
    {0x1000, "MSG_RST"},       {0x2000, "MSG_ERRQUEUE"}, {0x4000, "MSG_NOSIGNAL"}, {0x8000, "MSG_MORE"},
    {0x10000, "MSG_WAITFORONE"}, {0x40000, "MSG_BATCH"}, {0x4000000, "MSG_ZEROCOPY"},
    {0x20000000, "MSG_FASTOPEN"}, {0x40000000, "MSG_CMSG_CLOEXEC"},
};
constexpr Flag kPrctlOptions[] = {
    {1, "PR_SET_PDEATHSIG"},  {2, "PR_GET_PDEATHSIG"},   {3, "PR_GET_DUMPABLE"},   {4, "PR_SET_DUMPABLE"},
    {7, "PR_GET_KEEPCAPS"},   {8, "PR_SET_KEEPCAPS"},    {15, "PR_SET_NAME"},      {16, "PR_GET_NAME"},
    {21, "PR_GET_SECCOMP"},   {22, "PR_SET_SECCOMP"},    {23, "PR_CAPBSET_READ"},  {24, "PR_CAPBSET_DROP"},
    {29, "PR_SET_TIMERSLACK"}, {30, "PR_GET_TIMERSLACK"}, {35, "PR_SET_MM"},       {36, "PR_SET_CHILD_SUBREAPER"},
    {37, "PR_GET_CHILD_SUBREAPER"}, {38, "PR_SET_NO_NEW_PRIVS"}, {39, "PR_GET_NO_NEW_PRIVS"},
    {41, "PR_SET_THP_DISABLE"}, {42, "PR_GET_THP_DISABLE"}, {47, "PR_CAP_AMBIENT"},
    {0x53564d41, "PR_SET_VMA"},
};
constexpr Flag kArchPrctl[] = {{0x1001, "ARCH_SET_GS"}, {0x1002, "ARCH_SET_FS"}, {0x1003, "ARCH_GET_FS"},
                               {0x1004, "ARCH_GET_GS"}, {0x1011, "ARCH_GET_CPUID"}, {0x1012, "ARCH_SET_CPUID"}};
// Terminal and generic file ioctls (x86 numbering).
constexpr Flag kIoctls[] = {
    {0x5401, "TCGETS"},     {0x5402, "TCSETS"},      {0x5403, "TCSETSW"},     {0x5404, "TCSETSF"},
    {0x5405, "TCGETA"},     {0x5406, "TCSETA"},      {0x5407, "TCSETAW"},     {0x5408, "TCSETAF"},
    {0x5409, "TCSBRK"},     {0x540a, "TCXONC"},      {0x540b, "TCFLSH"},      {0x540c, "TIOCEXCL"},
    {0x540d, "TIOCNXCL"},   {0x540e, "TIOCSCTTY"},   {0x540f, "TIOCGPGRP"},   {0x5410, "TIOCSPGRP"},
    {0x5411, "TIOCOUTQ"},   {0x5412, "TIOCSTI"},     {0x5413, "TIOCGWINSZ"},  {0x5414, "TIOCSWINSZ"},
    {0x5415, "TIOCMGET"},   {0x5416, "TIOCMBIS"},    {0x5417, "TIOCMBIC"},    {0x5418, "TIOCMSET"},
    {0x5419, "TIOCGSOFTCAR"}, {0x541a, "TIOCSSOFTCAR"}, {0x541b, "FIONREAD"}, {0x541c, "TIOCLINUX"},
    {0x541d, "TIOCCONS"},   {0x541e, "TIOCGSERIAL"}, {0x541f, "TIOCSSERIAL"}, {0x5420, "TIOCPKT"},
    {0x5421, "FIONBIO"},    {0x5422, "TIOCNOTTY"},   {0x5423, "TIOCSETD"},    {0x5424, "TIOCGETD"},
    {0x5425, "TCSBRKP"},    {0x5427, "TIOCSBRK"},    {0x5428, "TIOCCBRK"},    {0x5429, "TIOCGSID"},
    {0x802c542a, "TCGETS2"}, {0x402c542b, "TCSETS2"}, {0x402c542c, "TCSETSW2"}, {0x402c542d, "TCSETSF2"},
    {0x80045430, "TIOCGPTN"}, {0x40045431, "TIOCSPTLCK"}, {0x80045432, "TIOCGDEV"}, {0x5437, "TIOCVHANGUP"},
    {0x80045438, "TIOCGPKT"}, {0x80045439, "TIOCGPTLCK"}, {0x80045440, "TIOCGEXCL"}, {0x5441, "TIOCGPTPEER"},
    {0x5450, "FIONCLEX"},   {0x5451, "FIOCLEX"},     {0x5452, "FIOASYNC"},    {0x5459, "TIOCSERGETLSR"},
    {0x5460, "FIOQSIZE"},
};

constexpr std::int64_t kMaxErrno = 4095;

// ---- strings ----------------------------------------------------------------------------------

bool is_octal_digit(unsigned char c) { return c >= '0' && c <= '7'; }

// strace's string_quote in its default style: C escapes for \" \\ \f \n \r \t \v, printable ASCII
// as is, everything else in octal (three digits when an octal digit follows).
void append_quoted(std::string& out, std::string_view s) {
  out += '"';
  for (std::size_t i = 0; i < s.size(); ++i) {
    const auto c = static_cast<unsigned char>(s[i]);
    switch (c) {
      case '"': out += "\\\""; break;
      case '\\': out += "\\\\"; break;
      case '\f': out += "\\f"; break;
      case '\n': out += "\\n"; break;
      case '\r': out += "\\r"; break;
      case '\t': out += "\\t"; break;
      case '\v': out += "\\v"; break;
      default:
        if (c >= ' ' && c < 0x7f) {
          out += static_cast<char>(c);
        } else {
          out += '\\';
          const bool full = i + 1 < s.size() && is_octal_digit(static_cast<unsigned char>(s[i + 1]));
          if (full || (c >> 6) != 0) out += static_cast<char>('0' + (c >> 6));
          if (full || (c >> 3) != 0) out += static_cast<char>('0' + ((c >> 3) & 7));
          out += static_cast<char>('0' + (c & 7));
        }
    }
  }
  out += '"';
}


void append_ptr(std::string& out, std::uint64_t v) {
  if (v == 0) out += "NULL";
  else append_hex(out, v);
}

// ---- one call ---------------------------------------------------------------------------------

class Decoding {
 public:
  Decoding(const Call& c, const FormatOptions& o, std::vector<std::string>& args)
      : c_(c), o_(o), args_(args), i386_(c.abi == abi::SyscallAbi::kI386) {
    if (c.ret) {
      const std::int64_t r = ret();
      failed_ = r < 0 && r >= -kMaxErrno;
    }
  }

  [[nodiscard]] bool failed() const { return failed_; }
  [[nodiscard]] bool returned_ok() const { return c_.ret.has_value() && !failed_; }
  [[nodiscard]] std::int64_t ret() const {
    return i386_ ? static_cast<std::int32_t>(static_cast<std::uint32_t>(*c_.ret)) : *c_.ret;
  }

  // Argument i as the ABI's unsigned long (i386: 32 bits).
  [[nodiscard]] std::uint64_t u(unsigned i) const {
    return i386_ ? (c_.args[i] & 0xffffffffULL) : c_.args[i];
  }
  [[nodiscard]] std::int32_t i32(unsigned i) const { return static_cast<std::int32_t>(static_cast<std::uint32_t>(c_.args[i])); }
  [[nodiscard]] std::int64_t slong(unsigned i) const {
    return i386_ ? static_cast<std::int64_t>(i32(i)) : static_cast<std::int64_t>(c_.args[i]);
  }

  std::string& next() { return args_.emplace_back(); }

  void hex(unsigned i) { append_hex(next(), u(i)); }
  void ptr(unsigned i) { append_ptr(next(), u(i)); }
  void dec(unsigned i) { fmt::format_to(std::back_inserter(next()), "{}", i32(i)); }
  void udec(unsigned i) { fmt::format_to(std::back_inserter(next()), "{}", u(i)); }
  void sdec(unsigned i) { fmt::format_to(std::back_inserter(next()), "{}", slong(i)); }
  void fd(unsigned i) { dec(i); }
  void dirfd(unsigned i) {
    if (i32(i) == -100) next() += "AT_FDCWD";
    else dec(i);
  }
  void mode(unsigned i) { fmt::format_to(std::back_inserter(next()), "{:#04o}", u(i) & 0xffffffffULL); }
  void flags(unsigned i, std::span<const Flag> t, std::string_view zero = "0") {
    append_flags(next(), u(i) & 0xffffffffULL, t, zero);
  }
  void xval(unsigned i, std::span<const Flag> t, std::string_view unknown) {
    append_xval(next(), u(i) & 0xffffffffULL, t, unknown);
  }
  void id(unsigned i, bool sixteen) {
    const std::uint64_t v = u(i) & (sixteen ? 0xffffULL : 0xffffffffULL);
    if (v == (sixteen ? 0xffffULL : 0xffffffffULL)) next() += "-1";
    else fmt::format_to(std::back_inserter(next()), "{}", v);
  }
  void signal(unsigned i) { append_signal(next(), i32(i)); }
  static void append_signal(std::string& out, std::int32_t sig) { out += signal_text(sig); }

  // The first capture of the wanted kind for argument i (entry or exit list).
  [[nodiscard]] const events::Capture* cap(unsigned i, abi::CaptureKind kind, bool at_exit) const {
    return find_capture(at_exit ? c_.exit_caps : c_.entry_caps, i, kind);
  }

  // A NUL-terminated string argument (a path: strace prints it whole, not cut at -s).
  void path(unsigned i, bool limited = false, bool at_exit = false) {
    std::string& out = next();
    const events::Capture* cp = cap(i, abi::CaptureKind::kString, at_exit);
    if (cp == nullptr || u(i) == 0 || (at_exit && !returned_ok())) {
      append_ptr(out, u(i));
      return;
    }
    std::string_view s = cp->data;
    if (const auto nul = s.find('\0'); nul != std::string_view::npos) s = s.substr(0, nul);
    bool cut = (cp->flags & (abi::kCaptureTruncated | abi::kCaptureLenUnknown | abi::kCaptureFault)) != 0 ||
               cp->true_len > s.size();
    if (limited && s.size() > o_.string_limit) {
      s = s.substr(0, o_.string_limit);
      cut = true;
    }
    append_quoted(out, s);
    if (cut) out += "...";
  }

  // A byte buffer (write at entry, read at exit): at most string_limit bytes, "..." if more.
  void buffer(unsigned i, bool at_exit) {
    std::string& out = next();
    const events::Capture* cp = cap(i, abi::CaptureKind::kBuffer, at_exit);
    if (cp == nullptr || (at_exit && !returned_ok())) {
      append_ptr(out, u(i));
      return;
    }
    std::uint64_t len = cp->true_len;
    if (at_exit && ret() >= 0) len = std::min<std::uint64_t>(len, static_cast<std::uint64_t>(ret()));
    const std::size_t shown = static_cast<std::size_t>(
        std::min<std::uint64_t>({len, cp->data.size(), o_.string_limit}));
    append_quoted(out, std::string_view(cp->data).substr(0, shown));
    if (shown < len) out += "...";
  }

  // readlink's output at exit: the bytes the call returned (a buffer or string capture).
  void readlink_buf(unsigned i) {
    if (cap(i, abi::CaptureKind::kBuffer, true) != nullptr) buffer(i, true);
    else path(i, true, true);
  }

  // execve's argv: ["ls", "-l"], each string cut at string_limit, at most string_limit entries.
  void argv(unsigned i) {
    std::string& out = next();
    const events::Capture* cp = cap(i, abi::CaptureKind::kArgv, false);
    if (cp == nullptr || u(i) == 0) {
      append_ptr(out, u(i));
      return;
    }
    out += '[';
    std::string_view rest = cp->data;
    std::uint64_t n = 0;
    bool more = false;
    while (!rest.empty() && n < cp->true_len) {
      if (n >= o_.string_limit) {
        more = true;
        break;
      }
      const auto nul = rest.find('\0');
      std::string_view s = rest.substr(0, nul);
      const bool unterminated = nul == std::string_view::npos;
      rest = unterminated ? std::string_view{} : rest.substr(nul + 1);
      if (n != 0) out += ", ";
      const bool cut = unterminated || s.size() > o_.string_limit;
      append_quoted(out, s.substr(0, std::min<std::size_t>(s.size(), o_.string_limit)));
      if (cut) out += "...";
      ++n;
    }
    if (more || n < cp->true_len || (cp->flags & abi::kCaptureTruncated) != 0) out += n != 0 ? ", ..." : "...";
    out += ']';
  }

  // envp: a pointer and, when the monitor counted the variables, strace's "/* N vars */".
  void envp(unsigned i) {
    std::string& out = next();
    append_ptr(out, u(i));
    const events::Capture* cp = cap(i, abi::CaptureKind::kArgv, false);
    if (cp != nullptr && u(i) != 0) fmt::format_to(std::back_inserter(out), " /* {} vars */", cp->true_len);
  }

  // struct sockaddr from a buffer capture, as strace prints it.
  void sockaddr(unsigned i, bool at_exit) {
    std::string& out = next();
    const events::Capture* cp = cap(i, abi::CaptureKind::kBuffer, at_exit);
    if (cp == nullptr || u(i) == 0 || (at_exit && !returned_ok())) {
      append_ptr(out, u(i));
      return;
    }
    const std::string_view d =
        std::string_view(cp->data).substr(0, static_cast<std::size_t>(std::min<std::uint64_t>(cp->true_len, cp->data.size())));
    append_sockaddr(out, d, u(i));
  }

  static void append_sockaddr(std::string& out, std::string_view d, std::uint64_t addr) {
    if (d.size() < 2) {
      append_hex(out, addr);
      return;
    }
    std::uint16_t family = 0;
    std::memcpy(&family, d.data(), 2);
    out += "{sa_family=";
    append_xval(out, family, kAddrFamilies, "AF_???");
    const auto be16 = [&](std::size_t at) {
      return static_cast<unsigned>((static_cast<unsigned char>(d[at]) << 8) | static_cast<unsigned char>(d[at + 1]));
    };
    const auto u32le = [&](std::size_t at) {
      std::uint32_t v = 0;
      std::memcpy(&v, d.data() + at, 4);
      return v;
    };
    if (family == 2 && d.size() >= 8) {   // AF_INET
      char ip[INET_ADDRSTRLEN] = {};
      inet_ntop(AF_INET, d.data() + 4, ip, sizeof ip);
      fmt::format_to(std::back_inserter(out), ", sin_port=htons({}), sin_addr=inet_addr(\"{}\")}}", be16(2), ip);
    } else if (family == 10 && d.size() >= 24) {   // AF_INET6
      char ip[INET6_ADDRSTRLEN] = {};
      inet_ntop(AF_INET6, d.data() + 8, ip, sizeof ip);
      fmt::format_to(std::back_inserter(out), ", sin6_port=htons({}), sin6_flowinfo=htonl({}), inet_pton(AF_INET6, \"{}\", &sin6_addr)",
                     be16(2), ntohl(u32le(4)), ip);
      if (d.size() >= 28) fmt::format_to(std::back_inserter(out), ", sin6_scope_id={}", u32le(24));
      out += '}';
    } else if (family == 1) {   // AF_UNIX
      std::string_view p = d.substr(2);
      if (!p.empty()) {
        out += ", sun_path=";
        if (p.front() == '\0') {
          out += '@';
          append_quoted(out, p.substr(1));
        } else {
          append_quoted(out, p.substr(0, std::min(p.find('\0'), p.size())));
        }
      }
      out += '}';
    } else if (family == 16 && d.size() >= 12) {   // AF_NETLINK
      fmt::format_to(std::back_inserter(out), ", nl_pid={}, nl_groups={:08x}}}", u32le(4), u32le(8));
    } else {
      out += ", sa_data=";
      append_quoted(out, d.substr(2));
      out += '}';
    }
  }

  void generic(unsigned n) {
    for (unsigned i = 0; i < n && i < 6; ++i) hex(i);
  }

  void decode(const SyscallInfo& info);

 private:
  void clone();
  void fcntl();
  // pipe/pipe2's int[2] at exit: [3, 4] as strace prints it.
  void fd_pair(unsigned i) {
    const events::Capture* cp = cap(i, abi::CaptureKind::kBuffer, true);
    if (cp == nullptr || u(i) == 0 || !returned_ok() || cp->data.size() < 8) {
      ptr(i);
      return;
    }
    std::int32_t fds[2] = {};
    std::memcpy(fds, cp->data.data(), sizeof fds);
    fmt::format_to(std::back_inserter(next()), "[{}, {}]", fds[0], fds[1]);
  }
  // wait4/waitpid's int status at exit, as strace prints it: [{WIFEXITED(s) && WEXITSTATUS(s) == 0}].
  void wait_status(unsigned i) {
    const events::Capture* cp = cap(i, abi::CaptureKind::kBuffer, true);
    if (cp == nullptr || u(i) == 0 || !returned_ok() || c_.ret.value_or(0) == 0 || cp->data.size() < 4) {
      ptr(i);
      return;
    }
    std::uint32_t s = 0;
    std::memcpy(&s, cp->data.data(), sizeof s);
    const WaitStatus w = decode_wait_status(s);
    std::string& out = next();
    out += "[{";
    switch (w.kind) {
      case WaitStatus::Kind::kContinued: out += "WIFCONTINUED(s)"; break;
      case WaitStatus::Kind::kStopped:
        out += "WIFSTOPPED(s) && WSTOPSIG(s) == ";
        append_signal(out, w.value);
        if (w.high != 0) fmt::format_to(std::back_inserter(out), " && s >> 16 == {}", w.high);
        break;
      case WaitStatus::Kind::kExited: fmt::format_to(std::back_inserter(out), "WIFEXITED(s) && WEXITSTATUS(s) == {}", w.value); break;
      case WaitStatus::Kind::kSignaled:
        out += "WIFSIGNALED(s) && WTERMSIG(s) == ";
        append_signal(out, w.value);
        if (w.core) out += " && WCOREDUMP(s)";
        break;
    }
    out += "}]";
  }
  // TIOCSWINSZ's struct winsize, copied at entry.
  void winsize(unsigned i) {
    const events::Capture* cp = cap(i, abi::CaptureKind::kBuffer, false);
    if (cp == nullptr || u(i) == 0 || cp->data.size() < 8) {
      ptr(i);
      return;
    }
    std::uint16_t w[4] = {};
    std::memcpy(w, cp->data.data(), sizeof w);
    fmt::format_to(std::back_inserter(next()), "{{ws_row={}, ws_col={}, ws_xpixel={}, ws_ypixel={}}}", w[0], w[1], w[2], w[3]);
  }
  void ioctl();
  void prctl();
  void mmap(std::uint64_t page);

  const Call& c_;
  const FormatOptions& o_;
  std::vector<std::string>& args_;
  bool i386_;
  bool failed_ = false;
};

void Decoding::mmap(std::uint64_t page) {
  ptr(0);
  udec(1);
  flags(2, kProt, "PROT_NONE");
  std::string& f = next();
  std::uint64_t v = u(3) & 0xffffffffULL;
  for (const auto& t : kMapTypes)
    if ((v & 0xf) == t.bits) {
      f += t.name;
      v &= ~std::uint64_t{0xf};
      if (v != 0) f += '|';
    }
  if (v != 0 || f.empty()) append_flags(f, v, kMapFlags);
  fd(4);
  append_hex(next(), u(5) * page);
}

void Decoding::clone() {
  // x86-64: flags, stack, parent_tid, child_tid, tls; i386: flags, stack, parent_tid, tls, child_tid.
  const unsigned ctid = i386_ ? 4 : 3, tls = i386_ ? 3 : 4;
  const std::uint64_t fl = u(0);
  std::string& stack = next();
  stack += "child_stack=";
  append_ptr(stack, u(1));
  std::string& f = next();
  f += "flags=";
  const std::uint64_t sig = fl & 0xff, rest = fl & ~std::uint64_t{0xff};
  if (rest != 0 || sig == 0) append_flags(f, rest, kCloneFlags);
  if (sig != 0) {
    if (rest != 0) f += '|';
    append_signal(f, static_cast<std::int32_t>(sig));
  }
  if ((fl & (0x100000 | 0x1000)) != 0) append_ptr(next() += "parent_tid=", u(2));
  if ((fl & 0x80000) != 0) append_ptr(next() += "tls=", u(tls));
  if ((fl & (0x1000000 | 0x200000)) != 0) append_ptr(next() += "child_tidptr=", u(ctid));
}

void Decoding::fcntl() {
  fd(0);
  xval(1, kFcntlCmds, "F_???");
  switch (u(1) & 0xffffffffULL) {
    case 2: flags(2, kFdFlags); break;                                         // F_SETFD
    case 4: append_open_flags(next(), u(2) & 0xffffffffULL); break;            // F_SETFL
    case 0: case 1030: case 8: case 1031: case 1024: case 1026: case 1033: dec(2); break;
    case 10: signal(2); break;                                                 // F_SETSIG
    case 1: case 3: case 9: case 11: case 1025: case 1032: case 1034: break;   // getters: no argument
    default: ptr(2);
  }
}

void Decoding::ioctl() {
  fd(0);
  const std::uint64_t req = u(1) & 0xffffffffULL;
  std::string& r = next();
  bool known = false;
  for (const auto& t : kIoctls)
    if (t.bits == req) {
      r += t.name;
      known = true;
    }
  if (!known) {
    static constexpr std::string_view kDirs[] = {"_IOC_NONE", "_IOC_WRITE", "_IOC_READ", "_IOC_READ|_IOC_WRITE"};
    fmt::format_to(std::back_inserter(r), "_IOC({}, {}, {}, {})", kDirs[(req >> 30) & 3], hex_string((req >> 8) & 0xff),
                   hex_string(req & 0xff), hex_string((req >> 16) & 0x3fff));
  }
  switch (req) {
    case 0x540c: case 0x540d: case 0x541d: case 0x5422: case 0x5427: case 0x5428: case 0x5437:
    case 0x5450: case 0x5451: break;                                       // no argument
    case 0x540e: case 0x5409: case 0x5425: case 0x540a: case 0x540b: sdec(2); break;   // integer
    case 0x5414: winsize(2); break;                                        // TIOCSWINSZ
    default: ptr(2);
  }
}

void Decoding::prctl() {
  const std::uint64_t opt = u(0) & 0xffffffffULL;
  xval(0, kPrctlOptions, "PR_???");
  switch (opt) {
    case 1: signal(1); break;                                // PR_SET_PDEATHSIG
    case 15: path(1, true); break;                           // PR_SET_NAME
    case 2: case 16: ptr(1); break;                          // PR_GET_PDEATHSIG, PR_GET_NAME: output pointer
    case 3: case 7: case 21: case 30: case 37: case 39: case 42: break;   // plain getters
    case 4: case 8: case 23: case 24: case 36: udec(1); break;
    case 38: case 41: for (unsigned i = 1; i < 5; ++i) udec(i); break;
    default: for (unsigned i = 1; i < 5; ++i) hex(i);
  }
}

void Decoding::decode(const SyscallInfo& info) {
  using D = Decoder;
  switch (info.decoder) {
    case D::kGeneric: case D::kHexRet: generic(info.nargs); break;
    case D::kNoArgs: break;
    case D::kInt: dec(0); if (info.nargs > 1) dec(1); break;
    case D::kFd: fd(0); break;
    case D::kFdPtr: fd(0); ptr(1); break;
    case D::kPath: path(0); break;
    case D::kPath2: path(0); path(1); break;
    case D::kPathPtr: path(0); ptr(1); break;
    case D::kPathMode: path(0); mode(1); break;
    case D::kAtPathMode: dirfd(0); path(1); mode(2); break;
    case D::kFdMode: fd(0); mode(1); break;
    case D::kRead: fd(0); buffer(1, true); udec(2); break;
    case D::kWrite: fd(0); buffer(1, false); udec(2); break;
    case D::kPread: fd(0); buffer(1, true); udec(2); sdec(3); break;
    case D::kPwrite: fd(0); buffer(1, false); udec(2); sdec(3); break;
    case D::kReadv: case D::kWritev: fd(0); ptr(1); udec(2); break;
    case D::kOpen:
      path(0);
      append_open_flags(next(), u(1) & 0xffffffffULL);
      if ((u(1) & (kOCreat | kOTmpfile)) != 0) mode(2);
      break;
    case D::kOpenat:
      dirfd(0);
      path(1);
      append_open_flags(next(), u(2) & 0xffffffffULL);
      if ((u(2) & (kOCreat | kOTmpfile)) != 0) mode(3);
      break;
    case D::kCreat: path(0); mode(1); break;
    case D::kFstatat: dirfd(0); path(1); ptr(2); flags(3, kAtFlags); break;
    case D::kStatx: dirfd(0); path(1); flags(2, kStatxFlags, "AT_STATX_SYNC_AS_STAT"); flags(3, kStatxMask); ptr(4); break;
    case D::kAccess: path(0); flags(1, kAccessModes, "F_OK"); break;
    case D::kFaccessat: dirfd(0); path(1); flags(2, kAccessModes, "F_OK"); break;
    case D::kFaccessat2: dirfd(0); path(1); flags(2, kAccessModes, "F_OK"); flags(3, kFaccessatFlags); break;
    case D::kGetdents: fd(0); ptr(1); udec(2); break;
    case D::kLseek: fd(0); sdec(1); xval(2, kWhence, "SEEK_???"); break;
    case D::kLlseek:
      fd(0);
      fmt::format_to(std::back_inserter(next()), "{}", static_cast<std::int64_t>((u(1) << 32) | (u(2) & 0xffffffffULL)));
      ptr(3);
      xval(4, kWhence, "SEEK_???");
      break;
    case D::kMmap: mmap(1); break;
    case D::kMmap2: mmap(4096); break;
    case D::kMprotect: ptr(0); udec(1); flags(2, kProt, "PROT_NONE"); break;
    case D::kMunmap: ptr(0); udec(1); break;
    case D::kBrk: ptr(0); break;
    case D::kExecve: path(0); argv(1); envp(2); break;
    case D::kExecveat: dirfd(0); path(1); argv(2); envp(3); flags(4, kAtFlags); break;
    case D::kClone: clone(); break;
    case D::kClone3: ptr(0); udec(1); break;
    case D::kWait4: dec(0); wait_status(1); flags(2, kWaitOptions); ptr(3); break;
    case D::kWaitpid: dec(0); wait_status(1); flags(2, kWaitOptions); break;
    case D::kDup2: fd(0); fd(1); break;
    case D::kDup3: fd(0); fd(1); flags(2, kOpenFlags); break;
    case D::kPipe: fd_pair(0); break;
    case D::kPipe2: fd_pair(0); flags(1, kOpenFlags); break;
    case D::kFcntl: fcntl(); break;
    case D::kGetcwd: path(0, true, true); udec(1); break;
    case D::kUnlinkat: dirfd(0); path(1); flags(2, kAtFlags); break;
    case D::kRenameat: dirfd(0); path(1); dirfd(2); path(3); break;
    case D::kRenameat2: dirfd(0); path(1); dirfd(2); path(3); flags(4, kRenameFlags); break;
    case D::kLinkat: dirfd(0); path(1); dirfd(2); path(3); flags(4, kAtFlags); break;
    case D::kSymlinkat: path(0); dirfd(1); path(2); break;
    case D::kFchmodat2: dirfd(0); path(1); mode(2); flags(3, kAtFlags); break;
    case D::kReadlink: path(0); readlink_buf(1); udec(2); break;
    case D::kReadlinkat: dirfd(0); path(1); readlink_buf(2); udec(3); break;
    case D::kChown: path(0); id(1, false); id(2, false); break;
    case D::kChown16: path(0); id(1, true); id(2, true); break;
    case D::kFchown: fd(0); id(1, false); id(2, false); break;
    case D::kFchown16: fd(0); id(1, true); id(2, true); break;
    case D::kFchownat: dirfd(0); path(1); id(2, false); id(3, false); flags(4, kAtFlags); break;
    case D::kKill: dec(0); signal(1); break;
    case D::kTgkill: dec(0); dec(1); signal(2); break;
    case D::kRtSigaction: signal(0); ptr(1); ptr(2); udec(3); break;
    case D::kRtSigprocmask: xval(0, kSigHow, "SIG_???"); ptr(1); ptr(2); udec(3); break;
    case D::kIoctl: ioctl(); break;
    case D::kSocket: {
      const std::uint64_t dom = u(0) & 0xffffffffULL;
      xval(0, kAddrFamilies, "AF_???");
      std::string& t = next();
      append_xval(t, u(1) & 0xf, kSockTypes, "SOCK_???");
      if ((u(1) & 0xfffffff0ULL) != 0) {
        t += '|';
        append_flags(t, u(1) & 0xfffffff0ULL, kSockFlags);
      }
      if (dom == 2 || dom == 10) xval(2, kIpProtos, "IPPROTO_???");
      else if (dom == 16) xval(2, kNetlinkProtos, "NETLINK_???");
      else dec(2);
      break;
    }
    case D::kSockaddrIn: fd(0); sockaddr(1, false); udec(2); break;
    case D::kAccept: fd(0); sockaddr(1, true); ptr(2); break;
    case D::kAccept4: fd(0); sockaddr(1, true); ptr(2); flags(3, kSockFlags); break;
    case D::kListen: fd(0); dec(1); break;
    case D::kSendto: fd(0); buffer(1, false); udec(2); flags(3, kMsgFlags); sockaddr(4, false); udec(5); break;
    case D::kRecvfrom: fd(0); buffer(1, true); udec(2); flags(3, kMsgFlags); sockaddr(4, true); ptr(5); break;
    case D::kMsg: fd(0); ptr(1); flags(2, kMsgFlags); break;
    case D::kIds: for (unsigned i = 0; i < info.nargs && i < 6; ++i) id(i, false); break;
    case D::kIds16: for (unsigned i = 0; i < info.nargs && i < 6; ++i) id(i, true); break;
    case D::kPrctl: prctl(); break;
    case D::kArchPrctl: xval(0, kArchPrctl, "ARCH_???"); hex(1); break;
  }
}

}  // namespace

Formatted format_call(const Call& call, const FormatOptions& opts) {
  Formatted f;
  const SyscallInfo* info = Table::get(call.abi).by_nr(call.nr);
  Decoding d(call, opts, f.args);
  if (info != nullptr) {
    f.name = std::string(info->name);
    d.decode(*info);
  } else {
    f.name = fmt::format("syscall_{:#x}", call.nr);
    d.generic(6);
  }
  f.ret = format_return(call);
  f.failed = d.failed();
  return f;
}

std::string format_args(const Call& call, const FormatOptions& opts) {
  std::vector<std::string> args;
  Decoding d(call, opts, args);
  if (const SyscallInfo* info = Table::get(call.abi).by_nr(call.nr)) d.decode(*info);
  else d.generic(6);
  std::string out = "(";
  for (std::size_t i = 0; i < args.size(); ++i) {
    if (i != 0) out += ", ";
    out += args[i];
  }
  out += ')';
  return out;
}

std::string format_return(const Call& call) {
  if (!call.ret) return "?";
  const bool i386 = call.abi == abi::SyscallAbi::kI386;
  const std::int64_t r = i386 ? static_cast<std::int32_t>(static_cast<std::uint32_t>(*call.ret)) : *call.ret;
  if (r < 0 && r >= -kMaxErrno) {
    const int err = static_cast<int>(-r);
    switch (err) {
      case 512: return "? ERESTARTSYS (To be restarted if SA_RESTART is set)";
      case 513: return "? ERESTARTNOINTR (To be restarted)";
      case 514: return "? ERESTARTNOHAND (To be restarted if no handler)";
      case 516: return "? ERESTART_RESTARTBLOCK (Interrupted by signal)";
      default: break;
    }
    const auto name = errno_name(err);
    if (!name) return fmt::format("-1 (errno {})", err);
    return fmt::format("-1 {} ({})", *name, errno_message(err).value_or(""));
  }
  const SyscallInfo* info = Table::get(call.abi).by_nr(call.nr);
  const Decoder dec = info != nullptr ? info->decoder : Decoder::kGeneric;
  const std::uint64_t ur = i386 ? static_cast<std::uint32_t>(r) : static_cast<std::uint64_t>(r);
  switch (dec) {
    case Decoder::kMmap: case Decoder::kMmap2: case Decoder::kBrk: case Decoder::kHexRet:
      return hex_string(ur);
    case Decoder::kFcntl: {
      const std::uint64_t cmd = call.args[1] & 0xffffffffULL;
      std::string out;
      if (cmd == 1 && r != 0) {   // F_GETFD
        out = hex_string(ur) + " (flags ";
        append_flags(out, ur, kFdFlags);
        out += ')';
        return out;
      }
      if (cmd == 3) {   // F_GETFL
        out = hex_string(ur) + " (flags ";
        append_open_flags(out, ur & 0xffffffffULL);
        out += ')';
        return out;
      }
      break;
    }
    default: break;
  }
  return fmt::format("{}", r);
}

std::string to_text(const Formatted& f, std::size_t start_col) {
  constexpr std::size_t kColumn = 40;   // strace's -a default
  std::string s;
  s.reserve(64);
  s += f.name;
  s += '(';
  for (std::size_t i = 0; i < f.args.size(); ++i) {
    if (i != 0) s += ", ";
    s += f.args[i];
  }
  s += ") ";
  if (start_col + s.size() < kColumn) s.append(kColumn - start_col - s.size(), ' ');
  s += "= ";
  s += f.ret;
  return s;
}

}  // namespace hvtrace::syscalls
