/* vmexport restore --define: the backed-up domain XML rewritten for the restored disks and
 * defined through libvirt (see define.h for the rules). */
#include "backup/define.h"

#include <errno.h>
#include <libvirt/libvirt.h>
#include <libvirt/virterror.h>
#include <libxml/parser.h>
#include <libxml/tree.h>
#include <libxml/xpath.h>
#include <limits.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include "core/cleanup.h"

/* NAME-restored-N: the first N not taken, up to this many tries. */
#define DEFINE_RENAME_TRIES 1000
#define DEFINE_RENAME_MARK  "-restored-"

static void quiet(void *opaque, virErrorPtr e)
{
    (void)opaque;
    (void)e;
}

static const char *virt_errmsg(void)
{
    const char *m = virGetLastErrorMessage();
    return m ? m : "unknown libvirt error";
}

static xmlXPathObjectPtr nodes(xmlDocPtr doc, xmlNodePtr at, const char *expr)
{
    xmlXPathContextPtr ctx = xmlXPathNewContext(doc);
    if (!ctx)
        return NULL;
    ctx->node = at ? at : xmlDocGetRootElement(doc);
    xmlXPathObjectPtr o = xmlXPathEvalExpression((const xmlChar *)expr, ctx);
    xmlXPathFreeContext(ctx);
    if (o && (!o->nodesetval || o->nodesetval->nodeNr == 0)) {
        xmlXPathFreeObject(o);
        o = NULL;
    }
    return o;
}

/* Unlinks and frees every node matching expr (relative to at). */
static void remove_all(xmlDocPtr doc, xmlNodePtr at, const char *expr)
{
    xmlXPathObjectPtr o = nodes(doc, at, expr);
    for (int i = 0; o && i < o->nodesetval->nodeNr; i++) {
        xmlUnlinkNode(o->nodesetval->nodeTab[i]);
        xmlFreeNode(o->nodesetval->nodeTab[i]);
        o->nodesetval->nodeTab[i] = NULL;
    }
    if (o)
        xmlXPathFreeObject(o);
}

static char *attr(xmlNodePtr n, const char *name)
{
    xmlChar *v = n ? xmlGetProp(n, (const xmlChar *)name) : NULL;
    char *s = v ? strdup((const char *)v) : NULL;
    xmlFree(v);
    return s;
}

static xmlNodePtr child(xmlNodePtr n, const char *name)
{
    for (xmlNodePtr c = n ? n->children : NULL; c; c = c->next)
        if (c->type == XML_ELEMENT_NODE && strcmp((const char *)c->name, name) == 0)
            return c;
    return NULL;
}

/* Points a <disk> at the raw file path. */
static int disk_point(xmlNodePtr disk, const char *path)
{
    xmlSetProp(disk, (const xmlChar *)"type", (const xmlChar *)"file");
    for (xmlNodePtr c; (c = child(disk, "source")) || (c = child(disk, "backingStore"));) {
        xmlUnlinkNode(c);
        xmlFreeNode(c);
    }
    xmlNodePtr src = xmlNewNode(NULL, (const xmlChar *)"source");
    if (!src)
        return -ENOMEM;
    xmlSetProp(src, (const xmlChar *)"file", (const xmlChar *)path);
    xmlNodePtr target = child(disk, "target");
    if (!(target ? xmlAddPrevSibling(target, src) : xmlAddChild(disk, src))) {
        xmlFreeNode(src);
        return -ENOMEM;
    }
    xmlNodePtr driver = child(disk, "driver");
    if (driver)
        xmlSetProp(driver, (const xmlChar *)"type", (const xmlChar *)"raw");
    return 0;
}

static xmlDocPtr parse(const char *xml)
{
    return xmlReadMemory(xml, (int)strlen(xml), "domain.xml", NULL,
                         XML_PARSE_NONET | XML_PARSE_NOERROR | XML_PARSE_NOWARNING);
}

int define_rewrite(const char *xml, const char *name, bool drop_identity,
                   const struct restored_disk *disks, size_t n, char **out, char *err,
                   size_t errlen)
{
    xmlDocPtr doc = parse(xml);
    xmlNodePtr root = doc ? xmlDocGetRootElement(doc) : NULL;
    if (!root || strcmp((const char *)root->name, "domain") != 0) {
        snprintf(err, errlen, "the VM definition is not a libvirt domain XML");
        if (doc)
            xmlFreeDoc(doc);
        return -EINVAL;
    }
    int r = 0;
    xmlNodePtr nm = child(root, "name");
    if (nm)
        xmlNodeSetContent(nm, NULL);
    else
        nm = xmlNewChild(root, NULL, (const xmlChar *)"name", NULL);
    if (!nm) {
        r = -ENOMEM;
        goto out;
    }
    xmlNodeAddContent(nm, (const xmlChar *)name); /* escaped by libxml2 */
    if (drop_identity) {
        remove_all(doc, root, "uuid");
        remove_all(doc, root, "devices/interface/mac");
    }
    xmlXPathObjectPtr o = nodes(doc, root, "devices/disk");
    for (int i = 0; r == 0 && o && i < o->nodesetval->nodeNr; i++) {
        xmlNodePtr d = o->nodesetval->nodeTab[i];
        CLEANUP_FREE char *device = attr(d, "device");
        CLEANUP_FREE char *target = attr(child(d, "target"), "dev");
        const struct restored_disk *rd = NULL;
        for (size_t k = 0; target && k < n; k++)
            if (strcmp(disks[k].disk, target) == 0)
                rd = &disks[k];
        bool writable = (!device || strcmp(device, "disk") == 0) && !child(d, "readonly");
        if (rd) {
            char abs[PATH_MAX];
            r = realpath(rd->dest, abs) ? disk_point(d, abs) : -errno;
            if (r < 0)
                snprintf(err, errlen, "disk %s: %s: %s", rd->disk, rd->dest, strerror(-r));
        } else if (writable) {
            /* never two domains on the same writable disk */
            xmlUnlinkNode(d);
            xmlFreeNode(d);
            o->nodesetval->nodeTab[i] = NULL;
        }
    }
    if (o)
        xmlXPathFreeObject(o);
    if (r == 0) {
        xmlChar *buf = NULL;
        int len = 0;
        xmlDocDumpMemory(doc, &buf, &len);
        *out = buf ? strndup((const char *)buf, (size_t)len) : NULL;
        xmlFree(buf);
        if (!*out)
            r = -ENOMEM;
    }
out:
    xmlFreeDoc(doc);
    return r;
}

/* The domain's name in the definition (malloc'ed), or NULL. */
static char *definition_name(const char *xml, char **uuid)
{
    xmlDocPtr doc = parse(xml);
    xmlNodePtr root = doc ? xmlDocGetRootElement(doc) : NULL;
    char *name = NULL;
    *uuid = NULL;
    if (root) {
        xmlChar *v = xmlNodeGetContent(child(root, "name"));
        name = v ? strdup((const char *)v) : NULL;
        xmlFree(v);
        xmlNodePtr u = child(root, "uuid");
        v = u ? xmlNodeGetContent(u) : NULL;
        *uuid = v ? strdup((const char *)v) : NULL;
        xmlFree(v);
    }
    if (doc)
        xmlFreeDoc(doc);
    return name;
}

static bool name_taken(virConnectPtr c, const char *name)
{
    virDomainPtr d = virDomainLookupByName(c, name);
    if (d)
        virDomainFree(d);
    return d != NULL;
}

int restore_define(const char *uri, const char *format, const char *definition,
                   const struct restored_disk *disks, size_t n, char **name, char *err,
                   size_t errlen)
{
    if (!format || strcmp(format, DEFINE_FORMAT_LIBVIRT) != 0) {
        snprintf(err, errlen, "the backup's VM definition is %s, not a libvirt domain",
                 format ? format : "of no known format");
        return -EOPNOTSUPP;
    }
    CLEANUP_FREE char *uuid = NULL;
    CLEANUP_FREE char *orig = definition_name(definition, &uuid);
    if (!orig) {
        snprintf(err, errlen, "the VM definition is not a libvirt domain XML with a name");
        return -EINVAL;
    }
    virSetErrorFunc(NULL, quiet);
    virConnectPtr c = virConnectOpen(uri);
    if (!c) {
        snprintf(err, errlen, "libvirt %s: %s", uri, virt_errmsg());
        return -ECONNREFUSED;
    }
    int r = 0;
    CLEANUP_FREE char *newname = strdup(orig);
    bool drop = false;
    if (uuid) {
        virDomainPtr d = virDomainLookupByUUIDString(c, uuid);
        drop = d != NULL;
        if (d)
            virDomainFree(d);
    }
    if (newname && name_taken(c, newname)) {
        drop = true;
        free(newname);
        newname = NULL;
        for (unsigned i = 1; i <= DEFINE_RENAME_TRIES && !newname; i++) {
            if (asprintf(&newname, "%s" DEFINE_RENAME_MARK "%u", orig, i) < 0) {
                newname = NULL;
                break;
            }
            if (name_taken(c, newname)) {
                free(newname);
                newname = NULL;
            }
        }
        if (!newname)
            snprintf(err, errlen, "no free name %s" DEFINE_RENAME_MARK "N on %s", orig, uri);
    }
    CLEANUP_FREE char *xml = NULL;
    if (!newname)
        r = -EEXIST;
    else
        r = define_rewrite(definition, newname, drop, disks, n, &xml, err, errlen);
    if (r == 0) {
        virDomainPtr d = virDomainDefineXML(c, xml);
        if (!d) {
            snprintf(err, errlen, "libvirt %s: defining domain %s: %s", uri, newname,
                     virt_errmsg());
            r = -EIO;
        } else {
            virDomainFree(d);
            *name = TAKE_PTR(newname);
        }
    }
    virConnectClose(c);
    return r;
}
