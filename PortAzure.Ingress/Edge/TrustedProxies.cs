using Microsoft.AspNetCore.HttpOverrides;
using Microsoft.Extensions.Options;
using PortAzure.Ingress.Webhooks;

namespace PortAzure.Ingress.Edge;

/// <summary>
/// Which hops may name the client in <c>X-Forwarded-For</c> (<c>Ingress:TrustedProxyNetworks</c>, CIDR notation).
/// With <c>ASPNETCORE_FORWARDEDHEADERS_ENABLED=true</c> (as the manifest sets) ASP.NET Core trusts the header from any
/// hop: a caller that reaches a pod directly then picks its own per-client rate bucket, or spends another client's.
/// Set, only a connection from these networks (the proxy in front) is believed; empty, the framework's rule stands.
/// </summary>
internal sealed class TrustedProxiesSetup(IOptions<IngressOptions> ingress) : IPostConfigureOptions<ForwardedHeadersOptions>
{
    public void PostConfigure(string? name, ForwardedHeadersOptions options)
    {
        ArgumentNullException.ThrowIfNull(options);
        if (ingress.ValueOrNull()?.TrustedProxyNetworks is not { Count: > 0 } networks)
        {
            return;
        }
        // After the framework's setup, which clears both lists when forwarded headers are turned on by configuration.
        options.KnownProxies.Clear();
        options.KnownIPNetworks.Clear();
        foreach (var network in networks)
        {
            options.KnownIPNetworks.Add(System.Net.IPNetwork.Parse(network));
        }
    }
}
