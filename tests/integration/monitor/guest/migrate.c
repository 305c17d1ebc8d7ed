/* A call that blocks on one vCPU and returns on another, on purpose: a child pinned to one CPU
 * blocks in read(2) on a pipe; the parent moves it to the other CPU (sched_setaffinity) and only
 * then writes, so every read returns on the CPU it did not enter on. The child prints each read's
 * bytes; every read's exit must reach the monitoring side paired with its entry (read's number,
 * its bytes captured at the exit). Usage: migrate ROUNDS (needs 2 CPUs). Compiled in the guest with
 * tcc by the integration test. */
#define _GNU_SOURCE
#include <sched.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/wait.h>
#include <time.h>
#include <unistd.h>

static int pin(pid_t pid, int cpu) {
  cpu_set_t s;
  CPU_ZERO(&s);
  CPU_SET(cpu, &s);
  return sched_setaffinity(pid, sizeof s, &s);
}

/* The child's state from /proc: 'S' once it sleeps in read. */
static char state_of(pid_t pid) {
  char path[64], buf[256];
  snprintf(path, sizeof path, "/proc/%d/stat", (int)pid);
  FILE *f = fopen(path, "r");
  if (!f) return '?';
  size_t n = fread(buf, 1, sizeof buf - 1, f);
  fclose(f);
  buf[n] = 0;
  char *p = strrchr(buf, ')');
  return p && p[1] == ' ' ? p[2] : '?';
}

int main(int argc, char **argv) {
  int rounds = argc > 1 ? atoi(argv[1]) : 20;
  int p[2];
  if (pipe(p) != 0) return 2;
  pid_t c = fork();
  if (c == 0) {
    close(p[1]);
    char buf[64];
    for (int i = 0; i < rounds; ++i) {
      ssize_t n = read(p[0], buf, sizeof buf);
      if (n <= 0) return 3;
      write(1, buf, (size_t)n);
    }
    return 0;
  }
  close(p[0]);
  if (pin(c, 0) != 0) return 4;
  for (int i = 0; i < rounds; ++i) {
    /* Wait until the child sleeps in its read (on CPU i % 2), then move it and wake it. */
    for (int k = 0; k < 2000 && state_of(c) != 'S'; ++k) {
      struct timespec ts = {0, 1000000};
      nanosleep(&ts, 0);
    }
    struct timespec settle = {0, 5000000};
    nanosleep(&settle, 0);
    if (pin(c, (i + 1) % 2) != 0) return 5;
    char msg[32];
    int len = snprintf(msg, sizeof msg, "migrate-%03d\n", i);
    if (write(p[1], msg, (size_t)len) != len) return 6;
  }
  int st = 0;
  waitpid(c, &st, 0);
  return WIFEXITED(st) ? WEXITSTATUS(st) : 7;
}
