# The serving gateway's nginx (mlpipe.serving.gateway) on every Nix path (apps, dev shells, the
# OCI image, checks.<system>.pytest): nixpkgs' nginx with njs compiled in, so the generated
# config needs no load_module. Whoever puts it on PATH also sets MLPIPE_NJS_MODULE="" (read by
# conf/gateway/nginx.yaml as check.module), so the gateway never looks for Debian's module.
# The stream module (the gateway's per-address TCP connection cap) is compiled into nixpkgs'
# nginx (withStream ? true); the gateway sees --with-stream in `nginx -V` and loads nothing.
{
  nginx,
  nginxModules,
}:

nginx.override { modules = [ nginxModules.njs ]; }
