# syntax=docker/dockerfile:1
# One image for every Portcullis process: the entry point is the `portcullis` command, so the
# container's arguments choose the process (gateway, auth, rotation [--once], services <kind>) or a
# tool (keys, users, clients). Settings come from the environment (docs/configuration.md).
#
#   docker build -t portcullis:0.1.0 .
#   docker run --rm portcullis:0.1.0 --help
#   docker run --rm -e PORTCULLIS_KEY_SECRETS=... -e DATABASE_URL=... portcullis:0.1.0 rotation --once
#
# This image has not been built on the project's own machines: they have no Docker engine. What
# test/deploy.test.ts checks instead: every command below exists (the npm scripts, npm's flags, the
# `portcullis` bin, each command and flag the manifests give it), every file copied exists or is made
# by `npm run build`, and the runtime stage's file layout runs `portcullis` with the compiled build
# and the production dependencies alone (docs/deployment.md).

# 1. Compile: every dependency (TypeScript is a dev dependency), then the compiled JavaScript.
#    --ignore-scripts: `npm ci` would otherwise run the build (prepare) and compile better-sqlite3,
#    which this stage does not run.
FROM node:20-bookworm AS build
WORKDIR /src
COPY . .
RUN npm ci --ignore-scripts && npm run build

# 2. Production dependencies only, installed from the lockfile into a tree that holds nothing but the
#    package manifests (the seven plugin workspaces are linked from node_modules/@portcullis/).
#    better-sqlite3 is the one dependency with a native part: `npm rebuild` fetches its prebuilt
#    binary or compiles it (this image has python3, make and g++).
FROM node:20-bookworm AS prod-deps
WORKDIR /app
COPY package.json package-lock.json ./
COPY plugins/core/package.json plugins/core/
COPY plugins/authorize/package.json plugins/authorize/
COPY plugins/metrics/package.json plugins/metrics/
COPY plugins/jwks-auth/package.json plugins/jwks-auth/
COPY plugins/rate-limit/package.json plugins/rate-limit/
COPY plugins/propagation/package.json plugins/propagation/
COPY plugins/tracing/package.json plugins/tracing/
RUN npm ci --omit=dev --ignore-scripts && npm rebuild better-sqlite3

# 3. What runs: Node.js, the production dependencies, the compiled build; no sources, no compiler,
#    no npm cache. bin/portcullis.js runs dist/ (there are no sources to be newer than it).
FROM node:20-bookworm-slim
RUN groupadd --system --gid 10001 portcullis \
 && useradd --system --uid 10001 --gid portcullis --home-dir /var/lib/portcullis --shell /usr/sbin/nologin portcullis \
 && install -d -o portcullis -g portcullis -m 0700 /var/lib/portcullis
# The SQLite store and a generated local key secret would go here; on Kubernetes set DATABASE_URL and
# PORTCULLIS_KEY_SECRETS, and nothing is written.
ENV PORTCULLIS_DATA_DIR=/var/lib/portcullis
WORKDIR /app
COPY --from=prod-deps /app/node_modules ./node_modules
COPY --from=build /src/package.json ./
COPY --from=build /src/bin ./bin
COPY --from=build /src/dist ./dist
COPY --from=build /src/plugins/core/package.json plugins/core/
COPY --from=build /src/plugins/core/dist plugins/core/dist
COPY --from=build /src/plugins/authorize/package.json plugins/authorize/
COPY --from=build /src/plugins/authorize/dist plugins/authorize/dist
COPY --from=build /src/plugins/metrics/package.json plugins/metrics/
COPY --from=build /src/plugins/metrics/dist plugins/metrics/dist
COPY --from=build /src/plugins/jwks-auth/package.json plugins/jwks-auth/
COPY --from=build /src/plugins/jwks-auth/dist plugins/jwks-auth/dist
COPY --from=build /src/plugins/rate-limit/package.json plugins/rate-limit/
COPY --from=build /src/plugins/rate-limit/dist plugins/rate-limit/dist
COPY --from=build /src/plugins/propagation/package.json plugins/propagation/
COPY --from=build /src/plugins/propagation/dist plugins/propagation/dist
COPY --from=build /src/plugins/tracing/package.json plugins/tracing/
COPY --from=build /src/plugins/tracing/dist plugins/tracing/dist
RUN ln -s /app/bin/portcullis.js /usr/local/bin/portcullis
USER 10001:10001
ENTRYPOINT ["portcullis"]
CMD ["--help"]
