#define _GNU_SOURCE
#include <signal.h>
#include <sys/prctl.h>
#include <sys/syscall.h>
#include <unistd.h>
#include "spf_proc.h"

int spf_set_pdeathsig(int sig) { return prctl(PR_SET_PDEATHSIG, sig); }
int spf_gettid(void) { return (int)syscall(SYS_gettid); }
int spf_tgkill(int pid, int tid, int sig) { return (int)syscall(SYS_tgkill, pid, tid, sig); }
