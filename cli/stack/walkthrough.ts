import type { DemoState } from './demo.js'

export interface StackUrls {
  auth: string
  issuer: string
  authAdmin: string
  rotationMetrics: string
  user: string
  order: string
  product: string
  gateway: string
  gatewayAdmin: string
}

export const DEFAULT_URLS: StackUrls = {
  auth: 'http://127.0.0.1:3000',
  issuer: 'http://127.0.0.1:3000',
  authAdmin: 'http://127.0.0.1:9091',
  rotationMetrics: 'http://127.0.0.1:9464',
  user: 'http://127.0.0.1:3001',
  order: 'http://127.0.0.1:3002',
  product: 'http://127.0.0.1:3003',
  gateway: 'http://127.0.0.1:8080',
  gatewayAdmin: 'http://127.0.0.1:9090'
}

const JSON_FIELD = (field: string): string =>
  `node -pe 'JSON.parse(require("fs").readFileSync(0, "utf8")).${field}'`

/**
 * The copy-paste walkthrough (bash or zsh, needs only curl and node), printed by `portcullis start`
 * and kept in the README's quick start. Each step says what you should see.
 */
export function walkthrough (u: StackUrls): string {
  const gw = u.gateway
  return `# 1. Log in as alice (a demo user) and keep her tokens in shell variables
LOGIN=$(curl -s ${u.auth}/auth/login -H 'content-type: application/json' \\
  -d '{"username":"alice","password":"alice-demo-pass"}')
ACCESS=$(printf '%s' "$LOGIN" | ${JSON_FIELD('access_token')})
REFRESH=$(printf '%s' "$LOGIN" | ${JSON_FIELD('refresh_token')})

# 2. Place an order through the gateway: 201. order-service checks alice with user-service and each
#    product with product-service, forwarding her token and the gateway's x-request-id.
curl -s ${gw}/api/orders -H "authorization: Bearer $ACCESS" \\
  -H 'content-type: application/json' -d '{"items":[{"productId":"p-1","quantity":2}]}'; echo
curl -s ${gw}/api/orders -H "authorization: Bearer $ACCESS"; echo

# 3. 401 without a token, and 401 with a tampered one (alice makes herself admin; the signature no longer matches)
curl -s -o /dev/null -w 'no token: %{http_code}\\n' ${gw}/api/orders
TAMPERED=$(printf '%s' "$ACCESS" | node -pe 'const [h, p, s] = require("fs").readFileSync(0, "utf8").split(".");
  const c = JSON.parse(Buffer.from(p, "base64url")); c.role = "admin";
  [h, Buffer.from(JSON.stringify(c)).toString("base64url"), s].join(".")')
curl -s -o /dev/null -w 'tampered: %{http_code}\\n' ${gw}/api/orders -H "authorization: Bearer $TAMPERED"

# 4. 403: bob may read orders but not place them (he lacks the order:create permission)
BOB=$(curl -s ${u.auth}/auth/login -H 'content-type: application/json' \\
  -d '{"username":"bob","password":"bob-demo-pass"}' | ${JSON_FIELD('access_token')})
curl -s -o /dev/null -w 'bob orders: %{http_code}\\n' ${gw}/api/orders -H "authorization: Bearer $BOB" \\
  -H 'content-type: application/json' -d '{"items":[{"productId":"p-1","quantity":1}]}'

# 5. 429: /api/products allows 10 requests a minute per caller; the last ones are refused
for i in $(seq 1 12); do curl -s -o /dev/null -w '%{http_code} ' ${gw}/api/products -H "authorization: Bearer $ACCESS"; done; echo

# 6. Refresh: a new token pair; the refresh token rotates on every use
PAIR=$(curl -s ${u.auth}/auth/refresh -H 'content-type: application/json' -d "{\\"refresh_token\\":\\"$REFRESH\\"}")
REFRESH=$(printf '%s' "$PAIR" | ${JSON_FIELD('refresh_token')})
curl -s -o /dev/null -w 'with the refreshed token: %{http_code}\\n' ${gw}/api/orders \\
  -H "authorization: Bearer $(printf '%s' "$PAIR" | ${JSON_FIELD('access_token')})"

# 7. Log out: 204; after it the refresh token is refused (401)
curl -s -o /dev/null -w 'logout: %{http_code}\\n' ${u.auth}/auth/logout -H 'content-type: application/json' -d "{\\"refresh_token\\":\\"$REFRESH\\"}"
curl -s -o /dev/null -w 'refresh after logout: %{http_code}\\n' ${u.auth}/auth/refresh -H 'content-type: application/json' -d "{\\"refresh_token\\":\\"$REFRESH\\"}"

# 8. Metrics (gateway admin port) and the signing keys
curl -s ${u.gatewayAdmin}/metrics | grep '^portcullis_' | head -n 5
node bin/portcullis.js keys list
`
}

export interface BannerInput {
  urls: StackUrls
  dataDir: string
  routeFile: string
  demo: DemoState | undefined
  demoCreated: boolean
}

export function banner (b: BannerInput): string {
  const u = b.urls
  const line = '='.repeat(78)
  const demo = b.demo === undefined
    ? 'Demo mode is off: add users with "node bin/portcullis.js users add" (see --help).\n'
    : `DEMO MODE${b.demoCreated ? ' (accounts created now, on the first start)' : ` (accounts from the first start, ${b.demo.createdAt})`}:
these passwords are public. Never expose this stack beyond your machine.
${b.demo.users.map((x) => `  user ${x.username.padEnd(6)} password ${x.password.padEnd(16)} role ${x.role.padEnd(5)} ${x.note}`).join('\n')}
  service client ${b.demo.client.clientId}  secret ${b.demo.client.clientSecret}
    (order-service uses it for its background calls; try it:
     curl -s ${u.auth}/oauth/token -d grant_type=client_credentials -d client_id=${b.demo.client.clientId} -d client_secret=${b.demo.client.clientSecret})
`
  return `
${line}
Portcullis is running.  Data: ${b.dataDir}  Routes: ${b.routeFile}
  gateway          ${u.gateway}   (admin: ${u.gatewayAdmin}/metrics, /health/ready)
  auth             ${u.auth}   (JWKS: ${u.auth}/.well-known/jwks.json, admin: ${u.authAdmin})
  user-service     ${u.user}
  order-service    ${u.order}
  product-service  ${u.product}
  rotation worker  metrics ${u.rotationMetrics}/metrics
${demo}${b.demo === undefined ? '' : `
Try it (copy-paste into bash or zsh, from this folder):

${walkthrough(u)}`}
Ctrl-C stops everything.
${line}
`
}
