using Microsoft.Extensions.DependencyInjection;
using Microsoft.Extensions.Options;

namespace PortAzure.Targets;

internal static class AzureDevOpsTargetsSetup
{
    /// <summary><c>AzureDevOps:*</c>, validated at start-up, and the warning for an empty target list.</summary>
    public static IServiceCollection AddAzureDevOpsTargets(this IServiceCollection services)
    {
        ArgumentNullException.ThrowIfNull(services);
        services.AddOptions<AzureDevOpsOptions>().BindConfiguration(AzureDevOpsOptions.SectionName).ValidateOnStart();
        services.AddSingleton<IValidateOptions<AzureDevOpsOptions>, AzureDevOpsOptionsValidator>();
        services.AddHostedService<OpenTargetsWarning>();
        return services;
    }
}
