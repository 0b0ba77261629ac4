#pragma once
/* spf_proc.h - process plumbing the runner needs and Python does not expose. */
int spf_set_pdeathsig(int sig);    /* die with sig when the parent dies (0 = ok) */
