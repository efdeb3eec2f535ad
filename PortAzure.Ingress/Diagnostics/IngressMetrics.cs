using System.Diagnostics.Metrics;
using PortAzure.Diagnostics;

namespace PortAzure.Ingress.Diagnostics;

/// <summary><c>portazure.ingress.requests</c>: webhook calls by outcome (and reason when rejected).</summary>
internal sealed class IngressMetrics
{
    public const string RequestsName = "portazure.ingress.requests";
    public const string UnverifiedName = "portazure.ingress.unverified_calls";
    private readonly Counter<long> _requests;
    private readonly UpDownCounter<long> _unverified;

    public IngressMetrics(IMeterFactory meterFactory)
    {
        var meter = meterFactory.Create(PortAzureDiagnostics.Name);
        _requests = meter.CreateCounter<long>(RequestsName, "{request}", "Webhook calls received, by outcome.");
        _unverified = meter.CreateUpDownCounter<long>(UnverifiedName, "{request}",
            "Webhook calls whose body is being read or whose signature is being checked.");
    }

    public void Unverified(long change) => _unverified.Add(change);

    public void Accepted() => _requests.Add(1, new KeyValuePair<string, object?>("outcome", "accepted"));

    public void Duplicate() => _requests.Add(1, new KeyValuePair<string, object?>("outcome", "duplicate"));

    public void Rejected(string reason) => _requests.Add(1,
        new KeyValuePair<string, object?>("outcome", "rejected"),
        new KeyValuePair<string, object?>("reason", reason));
}
