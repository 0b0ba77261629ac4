#define _GNU_SOURCE
#include <sys/prctl.h>
#include "spf_proc.h"

int spf_set_pdeathsig(int sig) { return prctl(PR_SET_PDEATHSIG, sig); }
