using Microsoft.Extensions.DependencyInjection;
using Microsoft.Extensions.Hosting;

namespace PortAzure.Tests.Infrastructure;

public static class HostedServices
{
    /// <summary>Takes one background service out of a host, so that a test can hold state it would change (a backlog).</summary>
    public static void RemoveHostedService<TService>(this IServiceCollection services)
        where TService : IHostedService
    {
        ArgumentNullException.ThrowIfNull(services);
        services.Remove(services.Single(d => d.ServiceType == typeof(IHostedService) && d.ImplementationType == typeof(TService)));
    }
}
