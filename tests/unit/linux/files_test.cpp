// Open files read from a synthetic guest: the classification of each fd (pty master and slave,
// TCP sockets with their addresses, unix sockets, pipes, files), and a hostile table (garbage and
// user-space pointers, a huge max_fds, unreadable pages, a BTF without the layout) giving bounded
// walks and errors a person can act on.
#include "linux/fake_guest.hpp"
#include "linux/files.hpp"

#include <gtest/gtest.h>

using namespace hvtrace;
using namespace hvtrace::linux_os;
using hvtrace::fake::FakeFile;
using hvtrace::fake::FakeGuest;
using hvtrace::fake::FakeLayout;

namespace {
constexpr std::uint32_t kChr = 0020000, kSock = 0140000, kFifo = 0010000, kReg = 0100000;

class FilesTest : public ::testing::Test {
 protected:
  void SetUp() override {
    auto g = FakeGuest::build();
    ASSERT_TRUE(g) << g.error().message;
    guest = std::move(*g);
    const GVA init = *guest->add_task({.pid = 1, .comm = "init", .parent = {}});
    conn_task = *guest->add_task({.pid = 500, .comm = "dropbear", .parent = init});
    shell_task = *guest->add_task({.pid = 501, .comm = "sh", .parent = conn_task});
    // The connection process: /dev/null, the client's socket, the pty master, a pipe's read end.
    FakeFile client{.fd = 3, .mode = kSock | 0777, .family = 2, .type = 1, .state = 1,
                    .local_ip = {10, 0, 2, 15}, .peer_ip = {10, 0, 2, 2}, .local_port = 22, .peer_port = 51234};
    auto c = guest->set_files(conn_task, {{.fd = 0, .mode = kChr | 0666, .major = 1, .minor = 3},
                                          client,
                                          {.fd = 5, .mode = kChr | 0666, .major = 5, .minor = 2},
                                          {.fd = 7, .mode = kFifo | 0600, .f_mode = 1}});
    ASSERT_TRUE(c) << c.error().message;
    conn_fds = *c;
    // The shell: the pty slave on 0-2, the pipe's write end (same inode), a file, an IPv6 socket.
    FakeFile v6{.fd = 9, .mode = kSock | 0777, .family = 10, .type = 1, .state = 1,
                .local_ip = {0x20, 0x01, 0x0d, 0xb8, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 1},
                .peer_ip = {0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0xff, 0xff, 192, 168, 1, 9}, .local_port = 2222, .peer_port = 40000};
    auto s = guest->set_files(shell_task, {{.fd = 0, .mode = kChr | 0620, .major = 136, .minor = 0},
                                           {.fd = 1, .mode = kChr | 0620, .major = 136, .minor = 0},
                                           {.fd = 2, .mode = kChr | 0620, .major = 136, .minor = 0},
                                           {.fd = 4, .mode = kFifo | 0600, .f_mode = 2, .inode = conn_fds.inodes[3]},
                                           {.fd = 6, .mode = kReg | 0644, .f_mode = 1, .ino = 1234},
                                           v6,
                                           {.fd = 10, .mode = kSock | 0777, .family = 1, .type = 1}});
    ASSERT_TRUE(s) << s.error().message;
    shell_fds = *s;
    auto k = kernel::Kernel::discover(guest->mem());
    ASSERT_TRUE(k) << k.error().message;
    kern = std::move(*k);
    auto l = Linux::attach(*kern);
    ASSERT_TRUE(l) << l.error().message;
    lx.emplace(std::move(*l));
    auto conn = lx->find_pid(Pid{500});
    auto shell = lx->find_pid(Pid{501});
    ASSERT_TRUE(conn && shell && conn->has_value() && shell->has_value());
    conn_proc = **conn;
    shell_proc = **shell;
  }
  void poke64(GVA va, std::uint64_t v) { ASSERT_TRUE(guest->mem().write_u64(guest->pa_of(va), v)); }

  std::unique_ptr<FakeGuest> guest;
  std::unique_ptr<kernel::Kernel> kern;
  std::optional<Linux> lx;
  GVA conn_task, shell_task;
  fake::FakeFdTable conn_fds, shell_fds;
  Process conn_proc, shell_proc;
};
}  // namespace

TEST_F(FilesTest, ClassifiesTheConnectionProcesssFds) {
  auto t = open_files(*lx, conn_proc);
  ASSERT_TRUE(t) << t.error().message;
  EXPECT_EQ(t->max_fds, 64u);
  EXPECT_FALSE(t->cut);
  ASSERT_EQ(t->files.size(), 4u);
  const auto& f = t->files;
  EXPECT_EQ(f[0].fd, 0);
  EXPECT_EQ(f[0].kind, FileKind::kCharDev);
  EXPECT_EQ(describe(f[0]), "chardev 1:3");
  EXPECT_EQ(f[1].fd, 3);
  ASSERT_EQ(f[1].kind, FileKind::kSocket);
  ASSERT_TRUE(f[1].socket);
  EXPECT_EQ(f[1].socket->family, 2);
  ASSERT_TRUE(f[1].socket->local && f[1].socket->peer);
  EXPECT_EQ(f[1].socket->local->ip, "10.0.2.15");
  EXPECT_EQ(f[1].socket->local->port, 22);
  EXPECT_EQ(f[1].socket->peer->ip, "10.0.2.2");
  EXPECT_EQ(f[1].socket->peer->port, 51234);
  EXPECT_EQ(describe(f[1]), "tcp 10.0.2.15:22 -> 10.0.2.2:51234");
  EXPECT_EQ(f[2].fd, 5);
  EXPECT_EQ(f[2].kind, FileKind::kPtyMaster);
  EXPECT_EQ(f[3].kind, FileKind::kPipe);
  EXPECT_TRUE(f[3].readable);
  EXPECT_FALSE(f[3].writable);
  EXPECT_EQ(f[3].inode, conn_fds.inodes[3]);
}

TEST_F(FilesTest, ClassifiesTheShellsFdsAndPairsPipeEnds) {
  auto t = open_files(*lx, shell_proc);
  ASSERT_TRUE(t) << t.error().message;
  ASSERT_EQ(t->files.size(), 7u);
  const auto& f = t->files;
  for (int i = 0; i < 3; ++i) {
    EXPECT_EQ(f[i].kind, FileKind::kPtySlave);
    EXPECT_EQ(describe(f[i]), "pty-slave /dev/pts/0");
  }
  EXPECT_EQ(f[3].kind, FileKind::kPipe);
  EXPECT_TRUE(f[3].writable);
  EXPECT_EQ(f[3].inode, conn_fds.inodes[3]) << "both ends of a pipe share its inode";
  EXPECT_EQ(f[4].kind, FileKind::kFile);
  EXPECT_EQ(f[4].ino, 1234u);
  ASSERT_EQ(f[5].kind, FileKind::kSocket);
  ASSERT_TRUE(f[5].socket && f[5].socket->local && f[5].socket->peer);
  EXPECT_EQ(f[5].socket->local->ip, "2001:db8::1");
  EXPECT_EQ(f[5].socket->peer->ip, "192.168.1.9") << "an IPv4-mapped peer reads as IPv4";
  EXPECT_EQ(describe(f[5]), "tcp6 [2001:db8::1]:2222 -> 192.168.1.9:40000");
  EXPECT_EQ(f[6].kind, FileKind::kSocket);
  EXPECT_EQ(describe(f[6]), "unix socket");
}

TEST_F(FilesTest, AProcessWithoutFilesHasNone) {
  poke64(GVA{conn_task.value + FakeLayout::kFiles}, 0);
  auto t = open_files(*lx, conn_proc);
  ASSERT_TRUE(t) << t.error().message;
  EXPECT_TRUE(t->files.empty());
}

TEST_F(FilesTest, GarbagePointersInTheTableAreClearErrors) {
  // A user-space files_struct, a garbage fdtable, a user-space fd array: each one error naming it.
  poke64(GVA{conn_task.value + FakeLayout::kFiles}, 0x7ffd00001000ULL);
  auto a = open_files(*lx, conn_proc);
  ASSERT_FALSE(a);
  EXPECT_NE(a.error().message.find("files_struct pointer 0x7ffd00001000 is not a kernel address"), std::string::npos) << a.error().message;
  EXPECT_NE(a.error().message.find("pid 500"), std::string::npos) << a.error().message;
  poke64(GVA{conn_task.value + FakeLayout::kFiles}, conn_fds.files_struct.value);
  poke64(GVA{conn_fds.files_struct.value + FakeLayout::kFilesFdt}, 0x4141414141414141ULL);
  auto b = open_files(*lx, conn_proc);
  ASSERT_FALSE(b);
  EXPECT_NE(b.error().message.find("fdtable pointer"), std::string::npos) << b.error().message;
  poke64(GVA{conn_fds.files_struct.value + FakeLayout::kFilesFdt}, conn_fds.fdtable.value);
  poke64(GVA{conn_fds.fdtable.value + FakeLayout::kFdtFd}, 0x1000);
  auto c = open_files(*lx, conn_proc);
  ASSERT_FALSE(c);
  EXPECT_NE(c.error().message.find("fd array pointer 0x1000"), std::string::npos) << c.error().message;
}

TEST_F(FilesTest, BadFilesAreEntriesWithTheirReasonAndTheWalkGoesOn) {
  // fd 0 points to user space, fd 3's struct socket pointer is garbage, fd 5 points beyond RAM, fd 6 into unmapped kernel space;
  // fd 7 is still read. The socket keeps its kind, with the reason its addresses are missing.
  poke64(GVA{conn_fds.fd_array.value + 0}, 0x400000);
  poke64(GVA{conn_fds.files[1].value + FakeLayout::kFilePrivate}, 0xdead000000000000ULL);
  poke64(GVA{conn_fds.fd_array.value + 8 * 5}, guest->va_of(GPA{guest->options().ram + 0x1000}).value);
  poke64(GVA{conn_fds.fd_array.value + 8 * 6}, 0xffffffffffff0000ULL);
  auto t = open_files(*lx, conn_proc);
  ASSERT_TRUE(t) << t.error().message;
  ASSERT_EQ(t->files.size(), 5u);
  const auto& f = t->files;
  EXPECT_EQ(f[0].kind, FileKind::kUnreadable);
  EXPECT_NE(f[0].error.find("struct file pointer 0x400000 is not a kernel address"), std::string::npos) << f[0].error;
  EXPECT_EQ(f[1].kind, FileKind::kSocket);
  ASSERT_TRUE(f[1].socket);
  EXPECT_FALSE(f[1].socket->error.empty());
  EXPECT_FALSE(f[1].socket->peer);
  EXPECT_EQ(f[2].kind, FileKind::kUnreadable);
  EXPECT_NE(f[2].error.find("reading struct file"), std::string::npos) << f[2].error;
  EXPECT_EQ(f[3].kind, FileKind::kUnreadable);
  EXPECT_EQ(f[4].fd, 7);
  EXPECT_EQ(f[4].kind, FileKind::kPipe);
}

TEST_F(FilesTest, SelfReferencesEndInAResultNotALoop) {
  // The fd array is the fdtable itself (its max_fds and fd pointer taken for file pointers), a
  // file's inode is the file, fdt points back into files_struct: each read once, nothing followed twice.
  poke64(GVA{conn_fds.fdtable.value + FakeLayout::kFdtFd}, conn_fds.fdtable.value);
  poke64(GVA{conn_fds.files[2].value + FakeLayout::kFileInode}, conn_fds.files[2].value);
  auto t = open_files(*lx, conn_proc);
  ASSERT_TRUE(t) << t.error().message;
  EXPECT_LE(t->files.size(), 64u);
  for (const auto& f : t->files) EXPECT_FALSE(describe(f).empty());
  poke64(GVA{conn_fds.files_struct.value + FakeLayout::kFilesFdt}, conn_fds.files_struct.value);
  auto u = open_files(*lx, conn_proc);
  if (u)
    EXPECT_LE(u->files.size(), 64u);
  else
    EXPECT_NE(u.error().message.find("pid 500"), std::string::npos) << u.error().message;
}

TEST_F(FilesTest, AHugeMaxFdsIsBoundedAndSaysItWasCut) {
  poke64(GVA{conn_fds.fdtable.value + FakeLayout::kFdtMaxFds}, 0xffffffffULL);
  // Slots past the 64 written lie in whatever follows the array: readable direct-map pages. The
  // walk looks at FdLimits::max_fds slots at most.
  FdLimits lim;
  lim.max_fds = 4096;
  auto t = open_files(*lx, conn_proc, lim);
  ASSERT_TRUE(t) << t.error().message;
  EXPECT_EQ(t->max_fds, 0xffffffffu);
  EXPECT_TRUE(t->cut);
  // And at most max_open files are kept: an array full of pointers stops there.
  for (int i = 0; i < 64; ++i) poke64(GVA{conn_fds.fd_array.value + 8ULL * i}, conn_fds.files[3].value);
  lim.max_open = 10;
  auto full = open_files(*lx, conn_proc, lim);
  ASSERT_TRUE(full) << full.error().message;
  EXPECT_EQ(full->files.size(), 10u);
  EXPECT_TRUE(full->cut);
}

TEST_F(FilesTest, AnUnreadableFdArrayIsAnErrorNamingTheSlots) {
  // The array beyond RAM: the first chunk cannot be read.
  poke64(GVA{conn_fds.fdtable.value + FakeLayout::kFdtFd}, guest->va_of(GPA{guest->options().ram + 0x2000}).value);
  auto t = open_files(*lx, conn_proc);
  ASSERT_FALSE(t);
  EXPECT_NE(t.error().message.find("reading fd slots 0..63"), std::string::npos) << t.error().message;
}

TEST_F(FilesTest, AProfileWithoutTheLayoutSaysOpenFilesAreNotAvailable) {
  kernel::Profile p = kern->profile();
  p.fields.erase("fdtable.fd");
  p.fields.erase("socket.sk");
  kernel::Kernel k2(guest->mem(), p, kern->layout(), "test");
  auto l2 = Linux::attach(k2);
  ASSERT_TRUE(l2) << l2.error().message;
  auto t = open_files(*l2, conn_proc);
  ASSERT_FALSE(t);
  EXPECT_NE(t.error().message.find("open files not available"), std::string::npos) << t.error().message;
  EXPECT_NE(t.error().message.find("fdtable.fd"), std::string::npos) << t.error().message;
  // Without the socket layout only: sockets are classified, without addresses, and say why.
  p.fields["fdtable.fd"] = *kern->profile().field("fdtable.fd");
  kernel::Kernel k3(guest->mem(), p, kern->layout(), "test");
  auto l3 = Linux::attach(k3);
  ASSERT_TRUE(l3);
  auto t3 = open_files(*l3, conn_proc);
  ASSERT_TRUE(t3) << t3.error().message;
  ASSERT_EQ(t3->files.size(), 4u);
  EXPECT_EQ(t3->files[1].kind, FileKind::kSocket);
  ASSERT_TRUE(t3->files[1].socket);
  EXPECT_NE(t3->files[1].socket->error.find("socket layout"), std::string::npos);
}

TEST_F(FilesTest, TheProfileRecordsAbsentOptionalFields) {
  // Discovery notes an optional field the BTF lacks, so a cached profile is not taken for an old one.
  EXPECT_FALSE(kern->profile().lacks_wanted_fields());
  EXPECT_TRUE(kern->profile().field("sock_common.skc_num").has_value());
  kernel::Profile old = kern->profile();
  old.fields.erase("sock_common.skc_num");
  old.sources.erase("field sock_common.skc_num");
  EXPECT_TRUE(old.lacks_wanted_fields());
}
