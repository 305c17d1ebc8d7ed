/* A known sequence of system calls, failing ones included, for comparing hvtrace trace with the
 * guest's own strace. With an argument N it repeats its loop N times (N x 4 calls). */
#include <fcntl.h>
#include <stdlib.h>
#include <string.h>
#include <sys/stat.h>
#include <unistd.h>

int main(int argc, char **argv) {
  int n = argc > 1 ? atoi(argv[1]) : 1;
  char buf[64];
  int fd = open("/etc/hostname", O_RDONLY);
  read(fd, buf, sizeof buf);
  close(fd);
  open("/nonexistent/hvtrace", O_RDONLY);           /* ENOENT */
  write(1, "calls: hello\n", 13);
  mkdir("/tmp/hvtrace-calls-dir", 0755);
  rmdir("/tmp/hvtrace-calls-dir");
  rmdir("/tmp/hvtrace-calls-dir");                   /* ENOENT */
  close(12345);                                      /* EBADF */
  for (int i = 0; i < n; ++i) {
    getuid();
    access("/etc/passwd", R_OK);
    access("/nope", F_OK);                           /* ENOENT */
    lseek(-1, 0, SEEK_SET);                          /* EBADF */
  }
  return 3;
}
