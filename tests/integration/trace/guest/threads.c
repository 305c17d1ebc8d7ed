/* Two threads and the main thread each write one line; traced with -f, every write must be
 * attributed to its own thread (tid) of the one process (pid). */
#include <pthread.h>
#include <unistd.h>

static void *run(void *msg) {
  write(1, (const char *)msg, 9);
  return 0;
}

int main(void) {
  pthread_t t[2];
  pthread_create(&t[0], 0, run, "thread-1\n");
  pthread_join(t[0], 0);
  pthread_create(&t[1], 0, run, "thread-2\n");
  pthread_join(t[1], 0);
  write(1, "thread-0\n", 9);
  return 0;
}
