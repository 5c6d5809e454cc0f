/*
 * The poison-event rule of the Matrix batch walk (matrix_poison.h): which
 * router refusals are worth waiting out and when an event is given up.
 */
#include "matrix_poison.h"

#include "status.h"

int matrix_poison_transient(int status)
{
    switch (status) {
    case PARLEY_ERR_STATE:
    case PARLEY_ERR_IO:
    case PARLEY_ERR_EOF:
    case PARLEY_ERR_TIMEOUT:
    case PARLEY_ERR_OTHER:
        return 1;
    default:
        return 0;
    }
}

enum matrix_poison_verdict matrix_poison_refused(struct matrix_poison *p,
                                                 unsigned long serial,
                                                 size_t index, int status)
{
    if (status == PARLEY_OK || matrix_poison_transient(status))
        return MATRIX_POISON_RETRY;
    if (p->tries == 0 || p->serial != serial || p->index != index) {
        p->serial = serial;
        p->index = index;
        p->tries = 0;
    }
    if (++p->tries < MATRIX_POISON_TRIES)
        return MATRIX_POISON_RETRY;
    p->tries = 0;
    return MATRIX_POISON_SKIP;
}
