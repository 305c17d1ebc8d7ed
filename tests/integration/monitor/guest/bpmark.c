/* A user program for the run-time breakpoint test: prints the address of marker() (tcc output is
 * not position independent, so every instance has it at the same address), waits until the file
 * named by argv[2] exists, then calls marker(base + 0..4) and exits. Compiled in the guest with tcc. */
#include <stdio.h>
#include <stdlib.h>
#include <unistd.h>

volatile int sink;

void marker(int x) { sink += x; }

int main(int argc, char **argv) {
  int base, i;
  if (argc != 3) return 2;
  base = atoi(argv[1]);
  printf("%p\n", (void *)marker);
  fflush(stdout);
  while (access(argv[2], F_OK) != 0) usleep(10000);
  for (i = 0; i < 5; ++i) marker(base + i);
  printf("called %d..%d\n", base, base + 4);
  return 0;
}
