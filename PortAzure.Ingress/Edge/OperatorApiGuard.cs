using Microsoft.Extensions.Options;
using PortAzure.Security;

namespace PortAzure.Ingress.Edge;

/// <summary>
/// Checks the operator key before YARP forwards anything to the Dispatcher. The Dispatcher checks it
/// again: the edge is the first wall, not the only one.
/// </summary>
internal static class OperatorApiGuard
{
    public static IApplicationBuilder UseOperatorApiKey(this IApplicationBuilder proxy) =>
        proxy.Use(async (context, next) =>
        {
            var key = context.RequestServices.GetRequiredService<IOptionsMonitor<AdminOptions>>().CurrentValue.ApiKey;
            var result = AdminApiKey.Check(context.Request, key);
            if (result != AdminApiKey.Result.Valid)
            {
                context.RequestServices.GetRequiredService<OperatorApiRefusalLog>().Refused(result);
                await AdminApiKey.Reject(result).ExecuteAsync(context);
                return;
            }
            await next(context);
        });
}
