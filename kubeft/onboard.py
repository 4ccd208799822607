"""``kubeft onboard NAMESPACE --profile P``: give a team's namespace to kubeft, in one idempotent step.

It does what docs/platform.md walks a platform team through:

1. the namespace (created if missing) gets the label ``kubeft.io/profile=P``, its default
   FineTuneProfile, and with ``--allow Q,R`` the annotation ``kubeft.io/allowed-profiles`` (other
   profiles its jobs may name in ``spec.profile``);
2. a RoleBinding ``kubeft-operator-secrets`` in it grants the operator's ServiceAccount the chart's
   ClusterRole ``<release>-secrets`` (read Secrets): in cluster mode with ``rbac.secrets=onboarded``
   (the chart's default) the operator reads Secrets nowhere else. The ClusterRole is found by its
   label ``kubeft.io/secret-reader=true``; its annotation ``kubeft.io/service-account`` names the
   ServiceAccount (``--cluster-role`` and ``--service-account`` name them by hand). In namespaced
   mode (the chart's ``watchNamespaces``) the chart's Role there already grants it: ``--no-rbac``.

``--dry-run`` prints the objects as YAML and changes nothing. Every profile named must exist.
"""

from __future__ import annotations

import argparse
import re
import sys
from typing import Any, Final

import yaml

from kubeft import contract
from kubeft import profile as profiles

ROLE_BINDING: Final = "kubeft-operator-secrets"
LABEL_SECRET_READER: Final = f"{contract.GROUP}/secret-reader"  # on the chart's ClusterRole
ANNOTATION_SERVICE_ACCOUNT: Final = f"{contract.GROUP}/service-account"  # on it: <namespace>/<name>
_DNS_LABEL = re.compile(r"^[a-z0-9]([-a-z0-9]{0,61}[a-z0-9])?$")
_DNS_NAME = re.compile(r"^[a-z0-9]([-a-z0-9.]{0,251}[a-z0-9])?$")


class OnboardError(RuntimeError):
    """Onboarding cannot go on; the message says why and what to do."""


def objects(
    namespace: str, profile: str, allowed: tuple[str, ...], cluster_role: str, service_account: str
) -> list[dict[str, Any]]:
    """The Namespace (its kubeft label and annotation only) and the RoleBinding onboarding makes."""
    meta: dict[str, Any] = {"name": namespace, "labels": {profiles.LABEL_PROFILE: profile}}
    if allowed:
        meta["annotations"] = {profiles.ANNOTATION_ALLOWED: ",".join(allowed)}
    sa_namespace, _, sa_name = service_account.partition("/")
    binding = {
        "apiVersion": "rbac.authorization.k8s.io/v1",
        "kind": "RoleBinding",
        "metadata": {
            "name": ROLE_BINDING,
            "namespace": namespace,
            "labels": {contract.LABEL_PART_OF: contract.MANAGED_BY},
        },
        "roleRef": {"apiGroup": "rbac.authorization.k8s.io", "kind": "ClusterRole", "name": cluster_role},
        "subjects": [{"kind": "ServiceAccount", "name": sa_name, "namespace": sa_namespace}],
    }
    return [{"apiVersion": "v1", "kind": "Namespace", "metadata": meta}, binding]


def check_names(namespace: str, profile: str, allowed: tuple[str, ...], service_account: str | None) -> None:
    """Refuses names Kubernetes would refuse, with the words of the option they came from."""
    if not _DNS_LABEL.match(namespace):
        raise OnboardError(
            f"NAMESPACE {namespace!r}: a namespace name is a DNS label (a-z, 0-9, '-', 63 at most)"
        )
    for option, name in [("--profile", profile), *(("--allow", a) for a in allowed)]:
        if not _DNS_NAME.match(name):
            raise OnboardError(
                f"{option} {name!r}: a FineTuneProfile name is a DNS name (a-z, 0-9, '-', '.')"
            )
    if service_account is not None:
        sa_ns, slash, sa_name = service_account.partition("/")
        if not (slash and _DNS_LABEL.match(sa_ns) and _DNS_NAME.match(sa_name)):
            raise OnboardError(f"--service-account {service_account!r}: give it as NAMESPACE/NAME")


def find_secret_reader(rbac: Any, cluster_role: str | None, service_account: str | None) -> tuple[str, str]:
    """(ClusterRole, "<namespace>/<ServiceAccount>") to bind: as given, else the chart's labelled one."""
    from kubernetes.client.rest import ApiException

    if cluster_role and service_account:
        return cluster_role, service_account
    if cluster_role:
        try:
            found = [rbac.read_cluster_role(cluster_role)]
        except ApiException as exc:
            if exc.status != 404:
                raise
            raise OnboardError(f"--cluster-role {cluster_role}: no such ClusterRole") from exc
    else:
        found = rbac.list_cluster_role(label_selector=f"{LABEL_SECRET_READER}=true").items
    if not found:
        raise OnboardError(
            f"no ClusterRole labelled {LABEL_SECRET_READER}=true: install kubeft's chart in cluster mode "
            "(rbac.secrets=onboarded, its default), or name one with --cluster-role and --service-account. "
            "In namespaced mode list the namespace in the chart's watchNamespaces, then use --no-rbac"
        )
    if len(found) > 1:
        names = ", ".join(sorted(r.metadata.name for r in found))
        raise OnboardError(f"several kubeft releases' ClusterRoles ({names}): choose one with --cluster-role")
    role = found[0]
    account = service_account or (role.metadata.annotations or {}).get(ANNOTATION_SERVICE_ACCOUNT)
    if not account:
        raise OnboardError(
            f"ClusterRole {role.metadata.name} has no annotation {ANNOTATION_SERVICE_ACCOUNT}: "
            "give --service-account NAMESPACE/NAME"
        )
    return str(role.metadata.name), str(account)


def onboard(
    api_client: Any,
    namespace: str,
    profile: str,
    allowed: tuple[str, ...] = (),
    cluster_role: str | None = None,
    service_account: str | None = None,
    dry_run: bool = False,
    rbac_binding: bool = True,
) -> tuple[list[dict[str, Any]], list[str]]:
    """Onboards ``namespace`` (see the module); returns the objects and what was done, line by line."""
    from kubernetes import client
    from kubernetes.client.rest import ApiException

    check_names(namespace, profile, allowed, service_account)
    custom = client.CustomObjectsApi(api_client)
    for name in (profile, *allowed):
        try:
            custom.get_cluster_custom_object(contract.GROUP, contract.VERSION, profiles.PLURAL, name)
        except ApiException as exc:
            if exc.status != 404:
                raise
            raise OnboardError(f"FineTuneProfile {name} not found (kubectl get finetuneprofiles)") from exc
    rbac = client.RbacAuthorizationV1Api(api_client)
    role, account = find_secret_reader(rbac, cluster_role, service_account) if rbac_binding else ("", "/")
    ns_body, binding = objects(namespace, profile, allowed, role, account)
    made = [ns_body, binding] if rbac_binding else [ns_body]
    if dry_run:
        return made, []
    core = client.CoreV1Api(api_client)
    done = []
    try:
        current = core.read_namespace(namespace)
    except ApiException as exc:
        if exc.status != 404:
            raise
        core.create_namespace(ns_body)
        done.append(f"namespace/{namespace} created with profile {profile}")
    else:
        labels, annotations = current.metadata.labels or {}, current.metadata.annotations or {}
        wanted_annotation = ns_body["metadata"].get("annotations", {}).get(profiles.ANNOTATION_ALLOWED)
        if labels.get(profiles.LABEL_PROFILE) == profile and (
            wanted_annotation is None or annotations.get(profiles.ANNOTATION_ALLOWED) == wanted_annotation
        ):
            done.append(f"namespace/{namespace} unchanged (profile {profile})")
        else:
            core.patch_namespace(namespace, {"metadata": ns_body["metadata"]})
            done.append(f"namespace/{namespace} labelled with profile {profile}")
    if not rbac_binding:
        return made, done
    try:
        existing = rbac.read_namespaced_role_binding(ROLE_BINDING, namespace)
    except ApiException as exc:
        if exc.status != 404:
            raise
        rbac.create_namespaced_role_binding(namespace, binding)
        done.append(f"rolebinding/{ROLE_BINDING} created: {account} may read Secrets in {namespace}")
    else:
        same_role = existing.role_ref.name == role
        subjects = [f"{s.namespace}/{s.name}" for s in existing.subjects or [] if s.kind == "ServiceAccount"]
        if same_role and subjects == [account]:
            done.append(f"rolebinding/{ROLE_BINDING} unchanged")
        else:  # a RoleBinding's roleRef cannot change: made again
            rbac.delete_namespaced_role_binding(ROLE_BINDING, namespace)
            rbac.create_namespaced_role_binding(namespace, binding)
            done.append(f"rolebinding/{ROLE_BINDING} replaced: {account} may read Secrets in {namespace}")
    return made, done


def register(sub: Any) -> None:
    parser = sub.add_parser(
        "onboard",
        help="give a namespace to kubeft: its FineTuneProfile, and the operator's Secret read there",
        description=(__doc__ or "").split("\n\n", 1)[1],
        formatter_class=argparse.RawDescriptionHelpFormatter,
    )
    parser.add_argument("namespace", metavar="NAMESPACE")
    parser.add_argument("--profile", required=True, help="the namespace's default FineTuneProfile")
    parser.add_argument(
        "--allow",
        default="",
        metavar="P1,P2",
        help="other FineTuneProfiles its jobs may name in spec.profile",
    )
    parser.add_argument("--cluster-role", help="the ClusterRole to bind (default: the chart's, by label)")
    parser.add_argument(
        "--service-account",
        metavar="NAMESPACE/NAME",
        help="the operator's ServiceAccount (default: the chart's)",
    )
    parser.add_argument(
        "--no-rbac",
        action="store_true",
        help="label only (namespaced mode: the chart's Role grants the rest)",
    )
    parser.add_argument("--kubeconfig", help="default: $KUBECONFIG, else ~/.kube/config")
    parser.add_argument("--dry-run", action="store_true", help="print the objects as YAML; change nothing")
    parser.set_defaults(func=run)


def run(args: argparse.Namespace) -> int:
    from kubernetes import client, config

    configuration = client.Configuration()
    config.load_kube_config(config_file=args.kubeconfig, client_configuration=configuration)
    allowed = tuple(a.strip() for a in args.allow.split(",") if a.strip())
    try:
        made, done = onboard(
            client.ApiClient(configuration), args.namespace, args.profile, allowed,
            args.cluster_role, args.service_account, args.dry_run, not args.no_rbac,
        )  # fmt: skip
    except OnboardError as exc:
        print(f"kubeft onboard: {exc}", file=sys.stderr)
        return 2
    if args.dry_run:
        print(yaml.safe_dump_all(made, sort_keys=False), end="")
    else:
        print("\n".join(done))
    return 0
