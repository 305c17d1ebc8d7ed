/* Writes a real 32-bit program: a minimal static ELF32 i386 executable (ELF header, one PT_LOAD,
 * hand-assembled code, no libc) at argv[1], for the tests of the 32-bit doors in a process the
 * kernel runs in 32-bit mode (doors.c only far-returns into 32-bit code inside a 64-bit process).
 * Compiled in the guest with tcc. The program, in order:
 *   1. open("/tmp/elf32-out", O_WRONLY|O_CREAT|O_TRUNC, 0644)  int $0x80
 *   2. write(fd, "elf32-int80\n", 12)                           int $0x80
 *   3. write(1, "elf32-int80\n", 12)                            int $0x80
 *   4. write(1, "elf32-vdso\n", 11) through the vDSO's __kernel_vsyscall, found as AT_SYSINFO (32)
 *      in the auxiliary vector on the initial stack; this is how 32-bit libc enters the kernel,
 *      and the vDSO picks the door (compat `syscall` on AMD CPUs, `sysenter` on Intel ones)
 *   5. fork()                                                   int $0x80
 *      child:  write(1, "elf32-sysenter\n", 15) by a direct `sysenter`, with the stack laid out as
 *              __kernel_vsyscall does (the kernel returns to the vDSO's landing pad, which pops
 *              ebp, edx, ecx and returns), then exit(0) via int $0x80. (A real AMD CPU raises #UD
 *              for sysenter in compatibility mode, and the child dies of SIGILL; QEMU's TCG, 10.0,
 *              runs it whatever the CPU model's vendor.)
 *      parent: waitpid(child, &status, 0)                       int $0x80
 *   6. close(fd)                                                int $0x80
 *   7. exit(42) via int $0x80 (43 when the auxiliary vector has no AT_SYSINFO; the vDSO write is
 *      then skipped)
 * Every int $0x80 call is one user int $0x80 instruction; the program makes no other call.
 *
 * `elf32gen OUT signals` writes another program instead, which takes two signals in 32-bit mode,
 * one through each i386 signal frame the kernel builds, each pending as a call returns:
 *   1. rt_sigaction(SIGUSR1, {handler, SA_SIGINFO|SA_RESTORER, restorer: rt_sigreturn}, NULL, 8)
 *   2. rt_sigaction(SIGUSR2, {handler, SA_RESTORER, restorer: pop eax; sigreturn}, NULL, 8)
 *   3. getpid(); kill(pid, SIGUSR1): the handler (a bare `ret`) runs on an rt frame, rt_sigreturn
 *   4. kill(pid, SIGUSR2): the handler runs on an old-style frame, sigreturn
 *   5. exit(0) */
#include <stdio.h>
#include <string.h>
#include <sys/stat.h>

#define BASE 0x08048000u
#define CODE 0x54u   /* file offset of the code: after the ELF header (52) and one program header (32) */
#define DATA 0x200u  /* file offset of the strings */
#define SIZE 0x280u

static unsigned char img[SIZE];
static unsigned n = CODE;       /* where the next instruction goes */
static unsigned label[16];      /* file offsets of labels */
static struct { unsigned at, label; } fix[16];
static int nfix;

enum { EAX, ECX, EDX, EBX, ESP, EBP, ESI, EDI };
enum { L_ENV, L_AUX, L_FOUND, L_NEXT, L_PARENT, L_CLOSE, L_STUB, L_HANDLER, L_RT, L_OLD };

static void put32(unsigned off, unsigned v) { memcpy(img + off, &v, 4); }
static void byte(unsigned v) { img[n++] = (unsigned char)v; }
static void mov(int reg, unsigned imm) { byte(0xb8 + reg); put32(n, imm); n += 4; }
static void int80(void) { byte(0xcd); byte(0x80); }
static void jump8(unsigned op, int to) {   /* jcc/jmp rel8, resolved at the end */
  byte(op);
  fix[nfix].at = n;
  fix[nfix++].label = to;
  byte(0);
}
static void here(int l) { label[l] = n; }

/* strings: file offset -> address */
static unsigned str(unsigned off, const char *s) {
  memcpy(img + off, s, strlen(s) + 1);
  return BASE + off;
}

static int write_elf(const char *out);

/* The `signals` program (see the top). */
static void signals_program(void) {
  enum { SIGUSR1 = 10, SIGUSR2 = 12, SA_SIGINFO = 4, SA_RESTORER = 0x04000000 };
  const unsigned act_rt = DATA + 0x20, act_old = DATA + 0x40;   /* struct sigaction (i386): handler, flags, restorer, mask[2] */
  mov(EAX, 174); mov(EBX, SIGUSR1); mov(ECX, BASE + act_rt); mov(EDX, 0); mov(ESI, 8); int80();
  mov(EAX, 174); mov(EBX, SIGUSR2); mov(ECX, BASE + act_old); mov(EDX, 0); mov(ESI, 8); int80();
  mov(EAX, 20); int80();                                     /* getpid */
  byte(0x89); byte(0xc7);                                    /* mov edi, eax */
  mov(EAX, 37); byte(0x89); byte(0xfb); mov(ECX, SIGUSR1); int80();   /* kill(pid, SIGUSR1): mov ebx, edi */
  mov(EAX, 37); byte(0x89); byte(0xfb); mov(ECX, SIGUSR2); int80();   /* kill(pid, SIGUSR2) */
  mov(EAX, 1); mov(EBX, 0); int80();                         /* exit(0) */
  byte(0xeb); byte(0xfe);                                    /* jmp . */
  here(L_HANDLER);
  byte(0xc3);                                                /* ret: to the restorer */
  here(L_RT);
  mov(EAX, 173); int80();                                    /* rt_sigreturn */
  here(L_OLD);
  byte(0x58);                                                /* pop eax (the signal number) */
  mov(EAX, 119); int80();                                    /* sigreturn */
  put32(act_rt, BASE + label[L_HANDLER]); put32(act_rt + 4, SA_SIGINFO | SA_RESTORER); put32(act_rt + 8, BASE + label[L_RT]);
  put32(act_old, BASE + label[L_HANDLER]); put32(act_old + 4, SA_RESTORER); put32(act_old + 8, BASE + label[L_OLD]);
}

int main(int argc, char **argv) {
  const char *out = argc > 1 ? argv[1] : "/tmp/elf32";
  if (argc > 2 && strcmp(argv[2], "signals") == 0) {
    signals_program();
    return write_elf(out);
  }
  const unsigned path = str(DATA, "/tmp/elf32-out");
  const unsigned m_int80 = str(DATA + 0x20, "elf32-int80\n");
  const unsigned m_vdso = str(DATA + 0x40, "elf32-vdso\n");
  const unsigned m_sysenter = str(DATA + 0x60, "elf32-sysenter\n");

  /* 1. fd = open(path, O_WRONLY|O_CREAT|O_TRUNC, 0644); kept in esi (preserved by the kernel) */
  mov(EAX, 5); mov(EBX, path); mov(ECX, 01 | 0100 | 01000); mov(EDX, 0644); int80();
  byte(0x89); byte(0xc6);                                    /* mov esi, eax */
  /* 2. write(fd, m_int80, 12) */
  mov(EAX, 4); byte(0x89); byte(0xf3); mov(ECX, m_int80); mov(EDX, 12); int80();   /* mov ebx, esi */
  /* 3. write(1, m_int80, 12) */
  mov(EAX, 4); mov(EBX, 1); mov(ECX, m_int80); mov(EDX, 12); int80();
  /* 4. AT_SYSINFO: esp -> argc, argv[argc], NULL, envp..., NULL, auxv pairs */
  mov(EBP, 43);                                              /* exit status if not found */
  byte(0x89); byte(0xe7);                                    /* mov edi, esp */
  byte(0x8b); byte(0x07);                                    /* mov eax, [edi] (argc) */
  byte(0x8d); byte(0x7c); byte(0x87); byte(0x08);            /* lea edi, [edi + eax*4 + 8] (envp) */
  here(L_ENV);
  byte(0x8b); byte(0x07);                                    /* mov eax, [edi] */
  byte(0x83); byte(0xc7); byte(0x04);                        /* add edi, 4 */
  byte(0x85); byte(0xc0);                                    /* test eax, eax */
  jump8(0x75, L_ENV);                                        /* jnz */
  here(L_AUX);                                               /* edi -> auxv */
  byte(0x8b); byte(0x07);                                    /* mov eax, [edi] */
  byte(0x85); byte(0xc0);                                    /* test eax, eax */
  jump8(0x74, L_NEXT);                                       /* jz: AT_NULL, not found */
  byte(0x83); byte(0xf8); byte(0x20);                        /* cmp eax, 32 (AT_SYSINFO) */
  jump8(0x74, L_FOUND);                                      /* je */
  byte(0x83); byte(0xc7); byte(0x08);                        /* add edi, 8 */
  jump8(0xeb, L_AUX);                                        /* jmp */
  here(L_FOUND);
  byte(0x8b); byte(0x7f); byte(0x04);                        /* mov edi, [edi + 4] */
  mov(EAX, 4); mov(EBX, 1); mov(ECX, m_vdso); mov(EDX, 11);
  byte(0xff); byte(0xd7);                                    /* call edi (__kernel_vsyscall) */
  mov(EBP, 42);
  here(L_NEXT);
  /* 5. fork; the child writes through a direct sysenter */
  mov(EAX, 2); int80();
  byte(0x85); byte(0xc0);                                    /* test eax, eax */
  jump8(0x75, L_PARENT);                                     /* jnz */
  mov(EAX, 4); mov(EBX, 1); mov(ECX, m_sysenter); mov(EDX, 15);
  byte(0xe8); put32(n, 0); fix[nfix].at = n; fix[nfix++].label = 0x100 | L_STUB; n += 4;   /* call stub */
  mov(EAX, 1); mov(EBX, 0); int80();                         /* exit(0) */
  here(L_STUB);                                              /* as __kernel_vsyscall: */
  byte(0x51); byte(0x52); byte(0x55);                        /* push ecx; push edx; push ebp */
  byte(0x89); byte(0xe5);                                    /* mov ebp, esp */
  byte(0x0f); byte(0x34);                                    /* sysenter (returns to the landing pad) */
  byte(0xeb); byte(0xfe);                                    /* jmp . (never reached) */
  here(L_PARENT);
  byte(0x89); byte(0xc3);                                    /* mov ebx, eax (child pid) */
  byte(0x83); byte(0xec); byte(0x04);                        /* sub esp, 4 */
  byte(0x89); byte(0xe1);                                    /* mov ecx, esp (&status) */
  mov(EAX, 7); mov(EDX, 0); int80();                         /* waitpid(pid, &status, 0) */
  /* 6. close(fd) */
  mov(EAX, 6); byte(0x89); byte(0xf3); int80();              /* mov ebx, esi */
  /* 7. exit(status in ebp) */
  mov(EAX, 1); byte(0x89); byte(0xeb); int80();              /* mov ebx, ebp */
  byte(0xeb); byte(0xfe);                                    /* jmp . */
  return write_elf(out);
}

/* Resolves the jumps, adds the ELF header and writes the image to `out`, executable. */
static int write_elf(const char *out) {
  if (n > DATA) {
    fprintf(stderr, "elf32: code overlaps the strings (%u bytes)\n", n);
    return 1;
  }
  for (int i = 0; i < nfix; ++i) {
    if (fix[i].label & 0x100) {   /* rel32 */
      put32(fix[i].at, label[fix[i].label & 0xff] - (fix[i].at + 4));
      continue;
    }
    const int rel = (int)label[fix[i].label] - (int)(fix[i].at + 1);
    if (rel < -128 || rel > 127) {
      fprintf(stderr, "elf32: jump out of range\n");
      return 1;
    }
    img[fix[i].at] = (unsigned char)(signed char)rel;
  }

  /* ELF header */
  static const unsigned char ident[16] = {0x7f, 'E', 'L', 'F', 1 /* 32-bit */, 1 /* LE */, 1 /* version */};
  memcpy(img, ident, 16);
  img[16] = 2;              /* e_type ET_EXEC */
  img[18] = 3;              /* e_machine EM_386 */
  put32(20, 1);             /* e_version */
  put32(24, BASE + CODE);   /* e_entry */
  put32(28, 52);            /* e_phoff */
  put32(32, 0);             /* e_shoff */
  put32(36, 0);             /* e_flags */
  img[40] = 52;             /* e_ehsize */
  img[42] = 32;             /* e_phentsize */
  img[44] = 1;              /* e_phnum */
  img[46] = 40;             /* e_shentsize */
  /* PT_LOAD: the whole file at BASE, read + execute */
  put32(52, 1);             /* p_type PT_LOAD */
  put32(56, 0);             /* p_offset */
  put32(60, BASE);          /* p_vaddr */
  put32(64, BASE);          /* p_paddr */
  put32(68, SIZE);          /* p_filesz */
  put32(72, SIZE);          /* p_memsz */
  put32(76, 5);             /* p_flags R+X */
  put32(80, 0x1000);        /* p_align */

  FILE *f = fopen(out, "wb");
  if (!f || fwrite(img, 1, SIZE, f) != SIZE || fclose(f) != 0) {
    perror(out);
    return 1;
  }
  return chmod(out, 0755) == 0 ? 0 : 1;
}
