/*
 * Flood control for one IRC connection: a token bucket (burst lines at
 * once, then one line per rate_ms) in front of a bounded queue that takes
 * lines from its targets in turn, so a long answer to one channel never
 * holds back another channel's answer, and within a channel takes whole
 * answers from the people asking in turn, with a cap on one person's
 * share.  Modelled on pounce's serverEnqueue (server.c:191-229) with a
 * fixed cap; the clock is passed in, so all of this is pure arithmetic
 * that tests can drive.
 */
#ifndef PARLEY_IRC_FLOOD_H
#define PARLEY_IRC_FLOOD_H

#include <stddef.h>
#include <stdint.h>

/* Lines waiting per connection; pounce's QueueCap.  At 1 line / s this
 * is over four minutes of output, far more than any sane backlog. */
#define IRC_QUEUE_CAP 256
/* Lines one asker may have waiting (over all targets): an eighth of the
 * queue, six default answers (4 lines and the !more hint), so one person
 * asking in a loop, or many times in many channels, leaves the rest of
 * the queue to everyone else.  The adapter raises it to one full answer
 * when max_lines is set higher. */
#define IRC_QUEUE_ASKER_CAP 32

/* Credit is kept in milliseconds of sending time so the arithmetic stays
 * in integers: one line costs rate_ms, the bucket holds burst of them. */
struct irc_bucket {
    uint64_t credit_ms;
    uint64_t last_ms;
    unsigned burst;
    unsigned rate_ms;
};

void irc_bucket_init(struct irc_bucket *b, unsigned burst, unsigned rate_ms,
                     uint64_t now_ms);
/* Take one line's worth: 1 when allowed now, 0 when the caller waits. */
int irc_bucket_take(struct irc_bucket *b, uint64_t now_ms);
/* Milliseconds until irc_bucket_take would succeed (0 = now). */
uint64_t irc_bucket_wait_ms(struct irc_bucket *b, uint64_t now_ms);

struct irc_queue;

/* Whether lines for target may be sent now (e.g. the channel is joined). */
typedef int irc_queue_ready_fn(const char *target, void *ctx);

/*
 * Create a queue holding at most cap lines, of which at most asker_cap
 * belong to one asker (over all targets), so that nobody can fill the
 * queue for everyone else.  PARLEY_OK or _OOM.
 */
int irc_queue_create(struct irc_queue **out, size_t cap, size_t asker_cap);
/* Free the queue; tags of lines still queued are passed to drop (may be
 * NULL) so the caller can finish their requests. */
void irc_queue_free(struct irc_queue *q, void (*drop)(void *tag));

/*
 * Append one unit (an answer: n lines, all or nothing, copied) for target
 * on behalf of asker (the person answered; "" or NULL for lines that
 * answer nobody, such as a room greeting).  tag (may be NULL) travels
 * with the last line and comes back from irc_queue_pop when that line
 * leaves the queue.  PARLEY_OK, _OOM, or _TOO_LARGE when the lines would
 * pass the queue's cap or the asker's share (lines for nobody have no
 * share of their own: the bot, not a person, queued them).
 */
int irc_queue_push(struct irc_queue *q, const char *target,
                   const char *asker, char *const *lines, size_t n,
                   void *tag);

/*
 * The next line.  Targets take turns line by line (a long answer in one
 * channel never holds back another channel's); within a target, askers
 * take turns unit by unit, so an answer stays in one piece and one
 * person's many answers do not starve another person's.  Only targets
 * for which ready returns 1 are served (ready may be NULL).  Returns 1
 * and sets *target and *line (borrowed, valid until irc_queue_pop) or 0
 * when nothing is ready.
 */
int irc_queue_peek(struct irc_queue *q, irc_queue_ready_fn *ready,
                   void *ctx, const char **target, const char **line);

/* Remove the line last returned by irc_queue_peek and move on to the next
 * target.  Returns that line's tag (NULL for all but a unit's last). */
void *irc_queue_pop(struct irc_queue *q);

/* Lines queued. */
size_t irc_queue_len(const struct irc_queue *q);

/* Lines queued for asker ("" or NULL: for nobody), over all targets. */
size_t irc_queue_asker_len(const struct irc_queue *q, const char *asker);

/* Drop every line for target, passing their tags to drop. */
void irc_queue_clear_target(struct irc_queue *q, const char *target,
                            void (*drop)(void *tag));

#endif
