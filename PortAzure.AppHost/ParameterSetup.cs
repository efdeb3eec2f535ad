using Microsoft.Extensions.Configuration;

namespace PortAzure.AppHost;

internal static class ParameterSetup
{
    /// <summary>
    /// A parameter read from <c>Parameters:{name}</c>. In run mode a development default fills in when it is
    /// not set, so <c>dotnet run</c> needs no set-up; in publish mode there is no default, so no
    /// development value reaches the manifest.
    /// </summary>
    public static IResourceBuilder<ParameterResource> AddRelayParameter(this IDistributedApplicationBuilder builder, string name, string developmentDefault, bool secret)
    {
        if (builder.ExecutionContext.IsPublishMode)
        {
            return builder.AddParameter(name, secret: secret);
        }
        var value = builder.Configuration[$"Parameters:{name}"];
        return builder.AddParameter(name, string.IsNullOrEmpty(value) ? developmentDefault : value, secret: secret);
    }
}
