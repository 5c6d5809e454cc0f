/*
 * Names of the result codes in status.h, for log lines and error texts.
 * Kept as a switch rather than a table indexed by the enum so that a
 * reordered or extended enum cannot silently print the wrong name: the
 * compiler's -Wswitch points at the missing case instead.
 */
#include "status.h"

const char *
parley_status_name(int status)
{
    /* Range first: an int outside the enum is not a valid enum value. */
    if (status < PARLEY_OK || status > PARLEY_ERR_OTHER)
        return "unknown";
    switch ((enum parley_status)status) {
    case PARLEY_OK:            return "ok";
    case PARLEY_ERR_IO:        return "io";
    case PARLEY_ERR_EOF:       return "eof";
    case PARLEY_ERR_PROTOCOL:  return "protocol";
    case PARLEY_ERR_OOM:       return "oom";
    case PARLEY_ERR_TIMEOUT:   return "timeout";
    case PARLEY_ERR_TOO_LARGE: return "too_large";
    case PARLEY_ERR_CONFIG:    return "config";
    case PARLEY_ERR_HTTP:      return "http";
    case PARLEY_ERR_STATE:     return "state";
    case PARLEY_ERR_OTHER:     return "other";
    }
    return "unknown";
}
