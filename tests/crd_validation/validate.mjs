// Validate custom resources against the CRD schemas compiled into @kubernetes-models packages.
// Input (stdin): a JSON array of manifests. Output (stdout): a JSON array of {kind, name, error}.
import * as gatewayApi from "@kubernetes-models/gateway-api/gateway.networking.k8s.io/v1";
import * as certManager from "@kubernetes-models/cert-manager/cert-manager.io/v1";
import * as keda from "@kubernetes-models/keda/keda.sh/v1alpha1";
import * as prometheusOperator from "@kubernetes-models/prometheus-operator/monitoring.coreos.com/v1";

const models = {
  "gateway.networking.k8s.io/v1": gatewayApi,
  "cert-manager.io/v1": certManager,
  "keda.sh/v1alpha1": keda,
  "monitoring.coreos.com/v1": prometheusOperator,
};

let input = "";
for await (const chunk of process.stdin) input += chunk;
const results = JSON.parse(input).map((manifest) => {
  const model = (models[manifest.apiVersion] || {})[manifest.kind];
  const name = (manifest.metadata || {}).name;
  if (!model) return { kind: manifest.kind, name, error: `no schema for ${manifest.apiVersion} ${manifest.kind}` };
  try {
    new model(manifest).validate();
    return { kind: manifest.kind, name, error: null };
  } catch (error) {
    return { kind: manifest.kind, name, error: String(error.message || error) };
  }
});
process.stdout.write(JSON.stringify(results));
