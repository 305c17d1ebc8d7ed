/* jansson_private_config.h for jansson 2.14 built by tcc 0.9.27 in the hvtrace guest.
 * Written on the host by guest/build-image (the guest has no cmake/configure); it mirrors
 * cmake/jansson_private_config.h.cmake for Debian 12 / glibc 2.36 on x86-64. */
#ifndef JANSSON_PRIVATE_CONFIG_H
#define JANSSON_PRIVATE_CONFIG_H

#define HAVE_ENDIAN_H 1
#define HAVE_FCNTL_H 1
#define HAVE_SCHED_H 1
#define HAVE_UNISTD_H 1
#define HAVE_SYS_PARAM_H 1
#define HAVE_SYS_STAT_H 1
#define HAVE_SYS_TIME_H 1
#define HAVE_SYS_TYPES_H 1
#define HAVE_STDINT_H 1

#define HAVE_CLOSE 1
#define HAVE_GETPID 1
#define HAVE_GETTIMEOFDAY 1
#define HAVE_OPEN 1
#define HAVE_READ 1
#define HAVE_SCHED_YIELD 1

/* Atomic options: both 0. tcc 0.9.27 has no __atomic/__sync builtins. hashtable_seed.c tests
 * these two with defined(), so "0" must be expressed by leaving them undefined. */
#undef HAVE_SYNC_BUILTINS
#undef HAVE_ATOMIC_BUILTINS

#define HAVE_LOCALE_H 1
#define HAVE_SETLOCALE 1

#define HAVE_INT32_T 1
#define HAVE_UINT32_T 1
#define HAVE_UINT16_T 1
#define HAVE_UINT8_T 1
#define HAVE_SSIZE_T 1

#define USE_URANDOM 1
/* USE_WINDOWS_CRYPTOAPI: not on Linux (tested with defined()). */

#define INITIAL_HASHTABLE_ORDER 3

#endif
