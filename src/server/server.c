/* Assembly of the server from its configuration: providers, catalog, auth.  Crash recovery runs
 * in server_start, so that 'vmexportd --check' changes nothing. */
#include <errno.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include "core/log.h"
#include "server/disk_cache.h"
#include "server/jobs.h"
#include "server/server.h"
#include "server/upload.h"

int server_new(const struct server_config *cfg, struct server **out, char *err, size_t errlen)
{
    struct server *s = calloc(1, sizeof(*s));
    if (!s)
        return -ENOMEM;
    s->cfg = cfg;
    int r = server_tls_check(cfg, err, errlen);
    if (r < 0) {
        free(s);
        return r;
    }
    r = disk_cache_new(&s->disk_cache);
    if (r < 0) {
        server_free(s);
        return r;
    }
    s->providers = calloc(cfg->n_providers, sizeof(*s->providers));
    if (!s->providers) {
        server_free(s);
        return -ENOMEM;
    }
    for (size_t i = 0; i < cfg->n_providers; i++) {
        const struct config_provider *cp = &cfg->providers[i];
        struct provider_config pc = {.name = cp->name,
                                     .settings = cp->settings,
                                     .n_settings = cp->n_settings,
                                     .block_hash = cfg->block_hash};
        char perr[512] = "";
        if ((r = provider_new(&pc, &s->providers[i], perr, sizeof(perr))) < 0) {
            snprintf(err, errlen, "%s: %s", cfg->file, perr[0] ? perr : strerror(-r));
            server_free(s);
            return r;
        }
        s->n_providers++;
    }
    char cerr[512] = "";
    if ((r = catalog_open(&s->catalog, cfg->db_file, cerr, sizeof(cerr))) < 0) {
        snprintf(err, errlen, "%s: [catalog] db_file: %s", cfg->file, cerr);
        server_free(s);
        return r;
    }
    struct auth_config ac = {
        .users_file = cfg->users_file,
        .pam_service = cfg->pam_service,
        .pam_role = cfg->pam_role,
        .token_ttl = cfg->token_ttl,
        .jwt_secret_file = cfg->jwt_secret_file,
        .max_failures = cfg->login_failures_per_address,
        .max_user_failures = cfg->login_failures_per_user,
        .failure_window = cfg->login_failure_window,
        .catalog = s->catalog,
    };
    char aerr[512] = "";
    if ((r = auth_open(&s->auth, &ac, aerr, sizeof(aerr))) < 0) {
        snprintf(err, errlen, "%s: [auth] %s", cfg->file, aerr[0] ? aerr : strerror(-r));
        server_free(s);
        return r;
    }
    *out = s;
    return 0;
}

void server_free(struct server *s)
{
    if (!s)
        return;
    job_pool_free(s->jobs); /* no request runs any more */
    job_pool_free(s->jobs_long);
    for (size_t i = 0; i < s->n_providers; i++)
        provider_free(s->providers[i]);
    uploads_close(s->uploads); /* before the catalog: it removes the uploads' records */
    free(s->providers);
    catalog_close(s->catalog);
    if (s->auth)
        auth_close(s->auth);
    free(s->cert_pem);
    free(s->key_pem);
    free(s->ca_pem);
    disk_cache_free(s->disk_cache);
    free(s);
}
