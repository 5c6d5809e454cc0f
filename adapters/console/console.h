/*
 * Console-only extras beyond adapter.h: main needs to know when standard
 * input has ended so it can exit once the last answer is printed.
 */
#ifndef PARLEY_CONSOLE_H
#define PARLEY_CONSOLE_H

struct adapter;

typedef void console_eof_fn(void *privdata);

/* Call fn once when stdin reaches end of file (or fails). */
void console_on_eof(struct adapter *ad, console_eof_fn *fn, void *privdata);
/* Whether stdin has ended. */
int console_at_eof(const struct adapter *ad);

#endif
