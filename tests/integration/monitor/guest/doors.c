/* Enters the kernel through every door a 64-bit Linux process can use, as an attacker would to
 * hide from a tracer that only traps the 64-bit `syscall`: `int $0x80` from 64-bit code, and three
 * children that far-return into the 32-bit user code segment and write through `int $0x80`, the
 * compat `syscall` and `sysenter`. (After a compat syscall or sysenter the kernel returns to the
 * 32-bit vDSO's landing pad, which a 64-bit process does not have, so those children die after
 * their write; the parent goes on.) Compiled in the guest with tcc by the integration test. */
#include <string.h>
#include <sys/mman.h>
#include <sys/wait.h>
#include <unistd.h>

static unsigned char *area; /* below 4 GiB: code at +0, messages at +1024, stack top at +8192 */

static void put32(unsigned char *p, unsigned v) { memcpy(p, &v, 4); }

/* mov eax,4; mov ebx,1; mov <reg>,msg; mov edx,len; [prologue]; door; then exit(7) via int $0x80 */
static int emit_write(unsigned char *c, unsigned char msg_reg_op, const unsigned char *door, int door_len,
                      unsigned msg, unsigned len, int set_ebp_esp) {
  int n = 0;
  c[n++] = 0xb8; put32(c + n, 4); n += 4;
  c[n++] = 0xbb; put32(c + n, 1); n += 4;
  c[n++] = msg_reg_op; put32(c + n, msg); n += 4;
  c[n++] = 0xba; put32(c + n, len); n += 4;
  if (set_ebp_esp) { c[n++] = 0x89; c[n++] = 0xe5; }           /* mov ebp, esp */
  memcpy(c + n, door, door_len); n += door_len;
  c[n++] = 0xb8; put32(c + n, 1); n += 4;                      /* mov eax, 1 (exit) */
  c[n++] = 0xbb; put32(c + n, 7); n += 4;                      /* mov ebx, 7 */
  c[n++] = 0xcd; c[n++] = 0x80;                                /* int $0x80 */
  c[n++] = 0xeb; c[n++] = 0xfe;                                /* jmp . */
  return n;
}

static void enter32(void) {
  unsigned long code = (unsigned long)area, stack = (unsigned long)area + 8192 - 16;
  __asm__ volatile("mov %0, %%rbx\n\t"
                   "mov %1, %%rsp\n\t"
                   "pushq $0x23\n\t"
                   "pushq %%rbx\n\t"
                   ".byte 0x48, 0xcb\n\t"   /* lretq: into the 32-bit user code segment */
                   : : "r"(code), "r"(stack) : "rbx", "memory");
}

static void child(const char *msg, unsigned char msg_reg_op, const unsigned char *door, int door_len, int set_ebp) {
  unsigned m = (unsigned)(unsigned long)(area + 1024);
  strcpy((char *)area + 1024, msg);
  emit_write(area, msg_reg_op, door, door_len, m, (unsigned)strlen(msg), set_ebp);
  if (fork() == 0) enter32();
  int st;
  wait(&st);
}

int main(void) {
  static const unsigned char int80[] = {0xcd, 0x80}, sysc[] = {0x0f, 0x05}, sysent[] = {0x0f, 0x34};
  area = mmap(0, 8192, PROT_READ | PROT_WRITE | PROT_EXEC, MAP_PRIVATE | MAP_ANONYMOUS | MAP_32BIT, -1, 0);
  if (area == MAP_FAILED) return 1;
  write(1, "doors-P1\n", 9);
  strcpy((char *)area + 2048, "doors-P80\n");
  long r;
  __asm__ volatile("int $0x80" : "=a"(r) : "a"(4L), "b"(1L), "c"((long)(area + 2048)), "d"(10L) : "memory");
  child("doors-A80\n", 0xb9, int80, 2, 0);   /* ecx = msg */
  child("doors-B32\n", 0xbd, sysc, 2, 0);    /* compat syscall: ebp = msg (the second argument) */
  child("doors-C34\n", 0xb9, sysent, 2, 1);  /* sysenter: ecx = msg, ebp = esp */
  write(1, "doors-P2\n", 9);
  return r == 10 ? 0 : 3;
}
