/*
 * The picture step of a chat job (issue 10, "pictures in"), between
 * gathering the room's state and asking the model.  A picture goes to the
 * model only when the model reads pictures (llm.vision_models); anyone
 * else hears which model would, and nothing is downloaded.  Bytes that
 * came with the event (the web chat) are used as they are; a reference
 * (Matrix) is fetched through the adapter (ops->fetch) at most
 * llm.image_max_bytes long.  The type is taken from the bytes (PNG,
 * JPEG, WebP, GIF).  The history keeps only the placeholder
 * (job_turn_text), never the picture, and a job resumed after a restart
 * fetches the picture again from the reference in its record.
 */
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include "adapter.h"
#include "config.h"
#include "event.h"
#include "image.h"
#include "log.h"
#include "router.h"
#include "router_job.h"
#include "status.h"

const char *job_turn_text(struct job *job)
{
    const struct event_attachment *a = job->ev->attachment;

    if (!a)
        return job->ev->text;
    if (!job->turn_text)
        job->turn_text = image_turn_text(a->name, a->len ? a->len : a->size,
                                         job->ev->text);
    return job->turn_text;
}

void job_image_free(struct job *job)
{
    free(job->turn_text);
    free(job->image_url);
    job->turn_text = NULL;
    job->image_url = NULL;
}

/* "I can't look at pictures with <model>", and which model can. */
static void job_image_refuse_model(struct job *job, const char *model)
{
    const struct config *cfg = job->r->cfg;
    char text[512], list[256];
    size_t i, used = 0;

    list[0] = '\0';
    for (i = 0; i < cfg->llm.n_vision_models; i++) {
        const char *v = cfg->llm.vision_models[i];
        int n;

        /* Only models people may switch to are worth naming. */
        if (!config_model_allowed(cfg, v))
            continue;
        n = snprintf(list + used, sizeof(list) - used, "%s%s",
                     used ? ", " : "", v);
        if (n < 0 || (size_t)n >= sizeof(list) - used)
            break;
        used += (size_t)n;
    }
    if (used)
        snprintf(text, sizeof(text), "I can't look at pictures with the "
                 "model %s. These models can: %s (switch with !model "
                 "NAME).", model, list);
    else
        snprintf(text, sizeof(text), "I can't look at pictures with the "
                 "model %s, and no model here is set up for pictures.",
                 model);
    log_room(LOG_LEVEL_INFO, job->ev->platform, job->ev->room,
             "picture from %s not read: %s is not in llm.vision_models",
             job->ev->sender ? job->ev->sender : "-", model);
    job_reply(job, text, 1);
}

static void job_image_refuse(struct job *job, int status)
{
    char text[256];

    if (status == PARLEY_ERR_TOO_LARGE)
        snprintf(text, sizeof(text), "That picture is too large for me "
                 "(the limit is %d KB); please send a smaller one.",
                 job->r->cfg->llm.image_max_bytes / 1024);
    else if (status == PARLEY_ERR_CONFIG)
        snprintf(text, sizeof(text), "I can only look at PNG, JPEG, WebP "
                 "and GIF pictures.");
    else
        snprintf(text, sizeof(text), "I couldn't download that picture; "
                 "please send it again.");
    log_room(LOG_LEVEL_INFO, job->ev->platform, job->ev->room,
             "picture from %s not read: %s",
             job->ev->sender ? job->ev->sender : "-",
             status == PARLEY_ERR_CONFIG ? "not an allowed type" :
             parley_status_name(status));
    job_reply(job, text, 1);
}

/* The bytes are here: check them and make the data URL.  Returns
 * PARLEY_OK, or the status job_image_refuse explains (CONFIG for a type
 * not taken). */
static int job_image_take(struct job *job, const unsigned char *data,
                          size_t len)
{
    const char *mime;

    if (len > (size_t)job->r->cfg->llm.image_max_bytes)
        return PARLEY_ERR_TOO_LARGE;
    mime = image_sniff_mime(data, len);
    if (!mime)
        return PARLEY_ERR_CONFIG;
    free(job->image_url);
    job->image_url = image_data_url(mime, data, len);
    return job->image_url ? PARLEY_OK : PARLEY_ERR_OOM;
}

static void job_image_fetched(int status, unsigned char *data, size_t len,
                              void *privdata)
{
    struct job *job = privdata;

    if (JOB_CLOSING(job)) {
        free(data);
        return;
    }
    if (status == PARLEY_OK)
        status = job_image_take(job, data, len);
    free(data);
    job->image_step = 2;
    if (status != PARLEY_OK) {
        job_image_refuse(job, status);
        return;
    }
    job->image_go_on(job);
}

int job_image_prepare(struct job *job, const char *model,
                      void (*go_on)(struct job *job))
{
    const struct event_attachment *a = job->ev->attachment;
    struct adapter *ad = job->ad;
    size_t max = (size_t)job->r->cfg->llm.image_max_bytes;
    int result;

    if (!a || job->image_step == 2)
        return 0;
    if (!job_turn_text(job)) {
        job_reply(job, ROUTER_FALLBACK_TEXT, 1);
        return 1;
    }
    if (!config_model_vision(job->r->cfg, model)) {
        job_image_refuse_model(job, model);
        return 1;
    }
    if (a->data) {
        result = job_image_take(job, a->data, a->len);
        if (result != PARLEY_OK) {
            job_image_refuse(job, result);
            return 1;
        }
        job->image_step = 2;
        return 0;
    }
    /* A declared size over the cap is not worth a request. */
    if (a->size > max) {
        job_image_refuse(job, PARLEY_ERR_TOO_LARGE);
        return 1;
    }
    if (!a->ref || !ad->ops->fetch) {
        job_image_refuse(job, PARLEY_ERR_PROTOCOL);
        return 1;
    }
    job->image_go_on = go_on;
    job->image_step = 1;
    result = ad->ops->fetch(ad, a->ref, max, job_image_fetched, job);
    if (result != PARLEY_OK) {
        job->image_step = 2;
        job_image_refuse(job, result == PARLEY_ERR_TOO_LARGE ?
                         PARLEY_ERR_PROTOCOL : result);
        return 1;
    }
    return 1;
}
